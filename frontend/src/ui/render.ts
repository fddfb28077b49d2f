// Markdown -> sanitised HTML for the browser: marked, highlight.js (a few languages,
// to keep the bundle small) and DOMPurify. Every HTML string the app inserts comes
// out of `sanitizeHtml`.

import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import go from "highlight.js/lib/languages/go";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import plaintext from "highlight.js/lib/languages/plaintext";
import python from "highlight.js/lib/languages/python";
import rust from "highlight.js/lib/languages/rust";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import { Marked } from "marked";

import { BlockRenderer } from "../core/markdown";

hljs.registerLanguage("python", python);
hljs.registerLanguage("javascript", javascript);
hljs.registerLanguage("typescript", typescript);
hljs.registerLanguage("bash", bash);
hljs.registerLanguage("json", json);
hljs.registerLanguage("sql", sql);
hljs.registerLanguage("go", go);
hljs.registerLanguage("rust", rust);
hljs.registerLanguage("plaintext", plaintext);
hljs.registerAliases(["shell", "console", "zsh"], { languageName: "bash" });

function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

const marked = new Marked({
  gfm: true,
  breaks: false,
  async: false,
  renderer: {
    code({ text, lang }) {
      const language = (lang ?? "").trim().split(/\s+/)[0]?.toLowerCase() ?? "";
      const known = language !== "" && hljs.getLanguage(language) !== undefined;
      const body = known ? hljs.highlight(text, { language, ignoreIllegals: true }).value : escapeHtml(text);
      const cls = known ? `hljs language-${escapeHtml(language)}` : "hljs";
      return `<pre><code class="${cls}">${body}</code></pre>\n`;
    },
  },
});

let hooked = false;
function installHooks(): void {
  if (hooked) return;
  hooked = true;
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      if (node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    }
  });
}

const PURIFY_CONFIG = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "iframe", "object", "embed", "frame", "frameset", "link", "meta", "base", "svg", "math"],
  FORBID_ATTR: ["style", "id", "name", "srcset", "formaction", "action"],
  ALLOW_DATA_ATTR: false,
};

/**
 * Sanitise HTML from Markdown of model output, then wrap each code block with a
 * Copy button (added after sanitising, so model output cannot forge one).
 */
export function sanitizeHtml(html: string): string {
  installHooks();
  const fragment = DOMPurify.sanitize(html, { ...PURIFY_CONFIG, RETURN_DOM_FRAGMENT: true });
  const doc = fragment.ownerDocument;
  for (const pre of Array.from(fragment.querySelectorAll("pre"))) {
    const wrap = doc.createElement("div");
    wrap.className = "code-block";
    const button = doc.createElement("button");
    button.type = "button";
    button.className = "copy-code";
    button.setAttribute("data-testid", "copy-code");
    button.textContent = "Copy";
    pre.replaceWith(wrap);
    wrap.append(button, pre);
  }
  const holder = doc.createElement("div");
  holder.append(fragment);
  return holder.innerHTML;
}

/** Markdown source -> safe HTML. */
export function renderMarkdown(source: string): string {
  return sanitizeHtml(marked.parse(source) as string);
}

/** Shared by every message: complete blocks are rendered once. */
export const blockRenderer = new BlockRenderer(renderMarkdown);
