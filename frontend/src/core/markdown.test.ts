import { describe, expect, it, vi } from "vitest";

import { BlockRenderer, splitBlocks } from "./markdown";

const sources = (src: string) => splitBlocks(src).map((b) => b.source);

describe("splitBlocks", () => {
  it("splits paragraphs and headings; only the last block is open", () => {
    const blocks = splitBlocks("# Title\nFirst para\nsame para\n\nSecond");
    expect(blocks).toEqual([
      { source: "# Title", complete: true },
      { source: "First para\nsame para", complete: true },
      { source: "Second", complete: false },
    ]);
  });

  it("keeps a code fence open across chunks as one block until it closes", () => {
    const chunks = ["Intro\n\n```py", "thon\nx = 1\n\n", "y = 2\n``", "`\n\nAfter"];
    let src = "";
    const seen: string[][] = [];
    for (const c of chunks) {
      src += c;
      seen.push(sources(src));
    }
    expect(seen[1]).toEqual(["Intro", "```python\nx = 1\n\n"]);
    expect(seen[2]).toEqual(["Intro", "```python\nx = 1\n\ny = 2\n``"]);
    expect(splitBlocks(src.slice(0, src.indexOf("After")))[1]).toEqual({
      source: "```python\nx = 1\n\ny = 2\n```",
      complete: true,
    });
    expect(seen[3]).toEqual(["Intro", "```python\nx = 1\n\ny = 2\n```", "After"]);
  });

  it("keeps a list, even a loose one, in one block", () => {
    expect(sources("Steps:\n\n- one\n- two\n\n- three\n  more\n\nDone")).toEqual([
      "Steps:",
      "- one\n- two\n\n- three\n  more",
      "Done",
    ]);
    expect(sources("1. a\n2. b\n\nText")).toEqual(["1. a\n2. b", "Text"]);
  });

  it("keeps a fenced block nested in a list item inside the list", () => {
    expect(sources("1. Run:\n   ```bash\n   ls\n\n   ```\n2. Next\n\nEnd")).toEqual([
      "1. Run:\n   ```bash\n   ls\n\n   ```\n2. Next",
      "End",
    ]);
  });

  it("keeps a table in one block", () => {
    const table = "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |";
    expect(sources(`Table:\n\n${table}\n\nAfter`)).toEqual(["Table:", table, "After"]);
  });

  it("the blocks hold the whole text", () => {
    const src = "# H\n\npara\n\n```js\nlet a\n\n```\n- x\n- y";
    expect(sources(src).join("").replace(/\s/g, "")).toBe(src.replace(/\s/g, ""));
  });
});

describe("BlockRenderer", () => {
  it("renders each complete block once; only the open block is re-rendered", () => {
    const render = vi.fn((s: string) => `<p>${s}</p>`);
    const r = new BlockRenderer(render);
    const chunks = ["# Head", "ing\n\nPara one", " goes on.\n\n```js\nlet x", " = 1;\n```\n\nLast", " words"];
    let src = "";
    for (const c of chunks) {
      src += c;
      r.renderAll(src, false);
    }
    const calls = render.mock.calls.map((c) => c[0]);
    // Every complete block is rendered exactly once, however many chunks follow it.
    expect(calls.filter((s) => s === "# Heading")).toHaveLength(1);
    expect(calls.filter((s) => s === "Para one goes on.")).toHaveLength(1);
    expect(calls.filter((s) => s === "```js\nlet x = 1;\n```")).toHaveLength(1);
    // while open, the growing blocks were rendered as they were
    expect(calls).toContain("# Head");
    expect(calls).toContain("```js\nlet x");
    const before = render.mock.calls.length;
    // more chunks: only the open last block is rendered
    r.renderAll(src + " more", false);
    expect(render.mock.calls.length - before).toBe(1);
    expect(render.mock.calls.at(-1)?.[0]).toBe("Last words more");
    // final render of the same text: the last block is cached afterwards
    const out = r.renderAll(src, true);
    expect(out.map((b) => b.complete)).toEqual([true, true, true, true]);
    const n = render.mock.calls.length;
    r.renderAll(src, true);
    expect(render.mock.calls.length).toBe(n);
  });

  it("returns the rendered html in order", () => {
    const r = new BlockRenderer((s) => `[${s}]`);
    expect(r.renderAll("a\n\nb", false).map((b) => b.html)).toEqual(["[a]", "[b]"]);
  });
});
