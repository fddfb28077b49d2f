// Incremental Markdown: an answer's source is split into top-level blocks; the
// complete ones are rendered once and cached by content, and only the last (still
// open) block is rendered again as chunks arrive. Pure: the render function is
// injected (the UI passes marked + highlight.js + DOMPurify).

export interface SourceBlock {
  /** The block's source lines, without the blank lines around it. */
  source: string;
  /** A later block has started, so this one can no longer change. */
  complete: boolean;
}

const FENCE_OPEN = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const ATX_HEADING = /^ {0,3}#{1,6}(\s|$)/;
const LIST_ITEM = /^ {0,3}([-+*]|\d{1,9}[.)])(\s|$)/;
const INDENTED = /^( {2,}|\t)/;
const BLANK = /^[ \t]*$/;

interface Fence {
  char: string;
  length: number;
  /** Opened inside a list item: the list goes on after it closes. */
  inList: boolean;
}

function fenceCloses(line: string, fence: Fence): boolean {
  const m = (fence.inList ? /^\s*(`{3,}|~{3,})[ \t]*$/ : /^ {0,3}(`{3,}|~{3,})[ \t]*$/).exec(line);
  return m !== null && m[1]!.charAt(0) === fence.char && m[1]!.length >= fence.length;
}

/**
 * Split Markdown source into top-level blocks: paragraphs, headings, lists, tables,
 * block quotes (separated by blank lines), and fenced code blocks (a fence still open
 * at the end of the source stays one block, whatever it holds, until it closes). A
 * list keeps blank lines between its items. Every block but the last is complete; the
 * last one too when it is a closed fence.
 */
export function splitBlocks(source: string): SourceBlock[] {
  const lines = source.split("\n");
  const blocks: string[] = [];
  let current: string[] = [];
  let fence: Fence | null = null;
  let currentIsList = false;
  let blankPending = false;

  const flush = (): void => {
    if (current.length > 0) blocks.push(current.join("\n"));
    current = [];
    currentIsList = false;
    blankPending = false;
  };

  for (const [index, line] of lines.entries()) {
    if (fence) {
      current.push(line);
      if (fenceCloses(line, fence)) {
        const inList = fence.inList;
        fence = null;
        if (!inList) flush();
      }
      continue;
    }
    const open = /^\s*(`{3,}|~{3,})(.*)$/.exec(line);
    // A backtick fence's info string may not contain a backtick.
    if (open && !(open[1]!.charAt(0) === "`" && open[2]!.includes("`"))) {
      const nested = currentIsList && INDENTED.test(line);
      if (nested || FENCE_OPEN.test(line)) {
        if (nested) {
          if (blankPending) current.push("");
          blankPending = false;
        } else {
          flush();
        }
        fence = { char: open[1]!.charAt(0), length: open[1]!.length, inList: nested };
        current.push(line);
        continue;
      }
    }
    if (BLANK.test(line)) {
      if (currentIsList) blankPending = true;
      else flush();
      continue;
    }
    if (blankPending) {
      // A list goes on across a blank line only with another item or an indented line.
      if (LIST_ITEM.test(line) || INDENTED.test(line)) {
        current.push("");
        blankPending = false;
      } else {
        flush();
      }
    }
    if (ATX_HEADING.test(line)) {
      flush();
      // A heading is one line; while it is the last one it may still grow.
      if (index === lines.length - 1) current.push(line);
      else blocks.push(line);
      continue;
    }
    if (current.length === 0 && LIST_ITEM.test(line)) currentIsList = true;
    current.push(line);
  }
  const lastOpen = current.length > 0;
  if (lastOpen) blocks.push(current.join("\n"));
  // The last block is open unless it is a fence that has closed (flushed above).
  return blocks.map((b, i) => ({ source: b, complete: i < blocks.length - 1 || !lastOpen }));
}

export interface RenderedBlock {
  /** Stable per position, for the UI's list keys. */
  key: string;
  html: string;
  complete: boolean;
}

/**
 * Renders answers block by block. Complete blocks are cached by their source (shared
 * by every message), so each is rendered once; the open last block is rendered on each
 * call until a later block starts or the answer is final.
 */
export class BlockRenderer {
  private readonly cache = new Map<string, string>();

  constructor(
    private readonly render: (source: string) => string,
    private readonly maxCached = 2000,
  ) {}

  /** `final`: the answer ended, so its last block is complete too. */
  renderAll(source: string, final: boolean): RenderedBlock[] {
    const blocks = splitBlocks(source);
    return blocks.map((b, i) => {
      const complete = b.complete || final;
      return { key: String(i), html: complete ? this.cached(b.source) : this.render(b.source), complete };
    });
  }

  private cached(source: string): string {
    const hit = this.cache.get(source);
    if (hit !== undefined) {
      // Refresh its place: the cache drops the least recently used first.
      this.cache.delete(source);
      this.cache.set(source, hit);
      return hit;
    }
    const html = this.render(source);
    this.cache.set(source, html);
    if (this.cache.size > this.maxCached) {
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    return html;
  }
}
