import type { ChatSnapshot } from "../core/client";

export function ConnectionBanner({ snap, now, onRetry }: { snap: ChatSnapshot; now: number; onRetry: () => void }) {
  const state = snap.connection;
  let text: string;
  let retry = false;
  switch (state) {
    case "open":
      text = "Connected";
      break;
    case "connecting":
      text = "Connecting…";
      break;
    case "reconnecting": {
      const s = snap.reconnectAt !== null ? Math.max(0, Math.ceil((snap.reconnectAt - now) / 1000)) : 0;
      text = `Reconnecting in ${s} s…`;
      retry = true;
      break;
    }
    case "offline":
      text = snap.closeText ?? "Disconnected.";
      retry = true;
      break;
    case "refused":
      text = snap.closeText ?? "Your sign-in was refused.";
      break;
  }
  const detail = state === "reconnecting" && snap.closeText ? snap.closeText.replace(/ Reconnecting…$/, "") : null;
  return (
    <div className={`banner banner-${state}`} data-testid="connection-banner" data-state={state} role="status" aria-live="polite" hidden={state === "open"}>
      <span className="banner-text">
        {text}
        {detail ? <span className="banner-detail"> {detail}</span> : null}
      </span>
      {retry ? (
        <button type="button" className="banner-retry" onClick={onRetry}>
          Retry now
        </button>
      ) : null}
    </div>
  );
}
