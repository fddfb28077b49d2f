import { useRef, useState, type FormEvent, type KeyboardEvent } from "react";

export function Composer({
  canSend,
  busy,
  disabledReason,
  onSend,
  onStop,
}: {
  canSend: boolean;
  busy: boolean;
  disabledReason: string | null;
  onSend: (text: string) => void;
  onStop: () => void;
}) {
  const [text, setText] = useState("");
  const input = useRef<HTMLTextAreaElement>(null);
  const ready = canSend && text.trim() !== "";

  const submit = (ev?: FormEvent): void => {
    ev?.preventDefault();
    if (!ready) return;
    onSend(text.trim());
    setText("");
    input.current?.focus();
  };

  const onKeyDown = (ev: KeyboardEvent<HTMLTextAreaElement>): void => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.nativeEvent.isComposing) {
      ev.preventDefault(); // Enter sends; Shift+Enter inserts a newline
      submit();
    }
  };

  return (
    <form className="composer" onSubmit={submit}>
      <textarea
        ref={input}
        data-testid="composer-input"
        aria-label="Message"
        rows={2}
        maxLength={8000}
        placeholder="Ask something… (Enter to send, Shift+Enter for a new line)"
        value={text}
        onChange={(e) => setText(e.target.value)}
        onKeyDown={onKeyDown}
      />
      <div className="composer-actions">
        {busy ? (
          <button type="button" className="stop" data-testid="stop-button" onClick={onStop}>
            Stop
          </button>
        ) : null}
        <button type="submit" className="send" data-testid="send-button" disabled={!ready} title={disabledReason ?? undefined}>
          Send
        </button>
      </div>
    </form>
  );
}
