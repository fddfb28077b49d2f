// @vitest-environment jsdom
import { describe, expect, it } from "vitest";

import { renderMarkdown, sanitizeHtml } from "./render";

function dom(html: string): HTMLElement {
  const div = document.createElement("div");
  div.innerHTML = html;
  return div;
}

describe("sanitising model output", () => {
  it("removes <script>", () => {
    const out = renderMarkdown("Hello <script>alert(1)</script> world");
    expect(out).not.toMatch(/<script/i);
    expect(dom(out).querySelector("script")).toBeNull();
    expect(out).toContain("Hello");
  });

  it("neutralises <img onerror>", () => {
    const out = renderMarkdown('<img src=x onerror="alert(1)">');
    const img = dom(out).querySelector("img");
    expect(out).not.toMatch(/onerror/i);
    if (img) expect(img.getAttributeNames().filter((a) => a.startsWith("on"))).toEqual([]);
  });

  it("drops javascript: links, in Markdown and in HTML", () => {
    const out = renderMarkdown('[click](javascript:alert(1)) and <a href="javascript:alert(2)">x</a>');
    expect(out).not.toMatch(/javascript:/i);
    for (const a of Array.from(dom(out).querySelectorAll("a"))) {
      expect(a.getAttribute("href") ?? "").not.toMatch(/^\s*javascript:/i);
    }
  });

  it("removes <iframe>", () => {
    const out = renderMarkdown('<iframe src="https://evil.example"></iframe>text');
    expect(dom(out).querySelector("iframe")).toBeNull();
    expect(out).not.toMatch(/<iframe/i);
  });

  it("opens links in a new tab without an opener", () => {
    const a = dom(renderMarkdown("[docs](https://example.com/x)")).querySelector("a");
    expect(a?.getAttribute("href")).toBe("https://example.com/x");
    expect(a?.getAttribute("target")).toBe("_blank");
    expect(a?.getAttribute("rel")).toBe("noopener noreferrer");
  });

  it("keeps Markdown structure and highlights code with a Copy button", () => {
    const out = dom(renderMarkdown("# Title\n\n- a\n- b\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\n```python\ndef f():\n    return 1\n```"));
    expect(out.querySelector("h1")?.textContent).toBe("Title");
    expect(out.querySelectorAll("li")).toHaveLength(2);
    expect(out.querySelector("table td")?.textContent).toBe("1");
    const code = out.querySelector(".code-block pre code");
    expect(code?.className).toContain("language-python");
    expect(code?.querySelector(".hljs-keyword")?.textContent).toBe("def");
    expect(code?.textContent).toBe("def f():\n    return 1");
    expect(out.querySelector('[data-testid="copy-code"]')?.textContent).toBe("Copy");
  });

  it("neutralises a mixed payload: no handler attribute, no javascript: anywhere", () => {
    const payload =
      'Look: <img src="x" onerror="window.__pwned = 1"> <script>window.__pwned = 2</script> ' +
      '<a href="javascript:window.__pwned = 3">click</a> <svg onload="window.__pwned = 4"></svg> ' +
      "[link](javascript:window.__pwned=5)";
    const out = renderMarkdown(payload);
    expect(out).not.toMatch(/<script/i);
    expect(out).not.toMatch(/\son\w+=/);
    expect(out).not.toMatch(/javascript:/i);
    expect(dom(out).querySelector("svg")).toBeNull();
  });

  it("does not let model output forge a button", () => {
    const out = dom(sanitizeHtml('<button data-testid="copy-code" onclick="x()">Copy</button>'));
    expect(out.querySelector("button")).toBeNull();
  });
});
