import { memo, useMemo, type MouseEvent } from "react";

import { noticeText, waitingText, type ChatMessage } from "../core/client";
import { blockRenderer } from "./render";

const Block = memo(function Block({ html }: { html: string }) {
  // html comes from renderMarkdown, which sanitises everything with DOMPurify.
  return <div className="md-block" dangerouslySetInnerHTML={{ __html: html }} />;
});

function Markdown({ text, final }: { text: string; final: boolean }) {
  const blocks = useMemo(() => blockRenderer.renderAll(text, final), [text, final]);
  return (
    <>
      {blocks.map((b) => (
        <Block key={b.key} html={b.html} />
      ))}
    </>
  );
}

async function copyText(text: string): Promise<boolean> {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    /* fall back below */
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

function onBodyClick(ev: MouseEvent<HTMLDivElement>): void {
  const target = ev.target as HTMLElement | null;
  const button = target?.closest<HTMLButtonElement>("button.copy-code");
  if (!button) return;
  const code = button.parentElement?.querySelector("pre")?.textContent ?? "";
  void copyText(code).then((ok) => {
    button.textContent = ok ? "Copied" : "Copy failed";
    window.setTimeout(() => {
      button.textContent = "Copy";
    }, 1500);
  });
}

const EMPTY_ANSWER = "This answer has no text: it ended before the model wrote any.";

const STATUS_LABEL: Partial<Record<ChatMessage["status"], string>> = {
  stopped: "stopped",
  error: "failed",
};

export const MessageView = memo(function MessageView({ message, now }: { message: ChatMessage; now: number }) {
  const { role, status } = message;
  const live = role === "assistant" && (status === "pending" || status === "streaming");
  const waiting = waitingText(message, now);
  // An answer that ended without text (it failed, or was stopped before its first
  // chunk; from history there is no error frame to say which) says so instead of
  // showing an empty bubble.
  const empty = role === "assistant" && !live && message.text === "" ? EMPTY_ANSWER : null;
  const notice = message.notice ? noticeText(message.notice, now) : (waiting ?? empty);
  const noticeIsError = message.notice !== null && message.notice.retryAt == null && !message.notice.runningAnswer;
  const label = role === "user" && status === "pending" ? "sending…" : STATUS_LABEL[status];
  return (
    <article
      className={`msg msg-${role} msg-${status}`}
      data-testid="message"
      data-role={role}
      data-message-id={message.messageId ?? ""}
      data-status={status}
    >
      <div
        className="msg-body"
        data-testid="message-body"
        aria-live={role === "assistant" ? "polite" : undefined}
        aria-busy={live || undefined}
        onClick={role === "assistant" ? onBodyClick : undefined}
      >
        {role === "assistant" ? (
          <Markdown text={message.text} final={!live} />
        ) : (
          <p className="user-text">{message.text}</p>
        )}
        {live && message.text === "" && !waiting ? <span className="typing" aria-label="Waiting for the answer" /> : null}
      </div>
      {notice ? (
        <div className={`msg-notice${noticeIsError ? " is-error" : ""}`} data-testid="message-notice" role={noticeIsError ? "alert" : undefined}>
          {notice}
        </div>
      ) : null}
      {label ? <div className="msg-meta">{label}</div> : null}
    </article>
  );
});
