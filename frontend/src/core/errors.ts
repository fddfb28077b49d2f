// Human messages for every error code (docs/protocol.md §4) and close code (§5).
// A test parses the doc's tables, so a code added there without a message fails.

export interface ErrorContext {
  /** Seconds until a retry, already counted down by the caller (busy/rate_limited). */
  retryInS?: number | null;
  /** busy with a message_id: another answer of this session is running. */
  runningAnswer?: boolean;
  /** The server's own text, used only as a detail. */
  serverMessage?: string | null;
}

const seconds = (s: number): string => `${Math.max(0, Math.ceil(s))} s`;

const ERROR_MESSAGES: Record<string, (ctx: ErrorContext) => string> = {
  bad_request: (c) =>
    `The server could not accept this request${c.serverMessage ? ` (${c.serverMessage})` : ""}. ` +
    "Shorten or change the message and try again.",
  not_found: () => "This answer no longer exists on the server (it expired or was removed).",
  stream_expired: () => "This answer is no longer cached for streaming; its text was loaded from the history.",
  busy: (c) => {
    if (c.retryInS != null) return `The service is busy. Retrying in ${seconds(c.retryInS)}…`;
    if (c.runningAnswer) {
      return "Another answer is still running in this chat. Your message will be sent when it finishes.";
    }
    return "The service is busy. Try again in a moment.";
  },
  rate_limited: (c) =>
    c.retryInS != null
      ? `You are sending messages too fast. Retrying in ${seconds(c.retryInS)}…`
      : "You are sending messages too fast. Wait a moment and try again.",
  upstream_unavailable: () => "No AI worker could finish this answer. Try again.",
  state_lost: () =>
    "The server lost part of this answer's state, so it stopped here. " +
    "The text shown may differ from the saved history. Try again.",
  internal: () => "Something went wrong on the server. Try again.",
};

/** A sentence for an `error` frame's code; never just the raw code. */
export function errorMessage(code: string, ctx: ErrorContext = {}): string {
  const make = ERROR_MESSAGES[code];
  if (make) return make(ctx);
  const detail = ctx.serverMessage ? `: ${ctx.serverMessage}` : "";
  return `The server reported a problem (${code})${detail}.`;
}

export function hasErrorMessage(code: string): boolean {
  return Object.hasOwn(ERROR_MESSAGES, code);
}

const CLOSE_MESSAGES: Record<number, (reason: string) => string> = {
  1000: () => "The connection was closed.",
  1001: () => "The server is going away. Reconnecting…",
  1006: () => "The connection was lost. Reconnecting…",
  1008: () => "The server refused this chat's address (invalid session id or origin). Reload the page or start a new chat.",
  1009: () => "The last message was too large for the server. Shorten it and reload the page.",
  1011: () => "The connection stopped answering. Reconnecting…",
  1012: () => "The server is restarting. Reconnecting…",
  1013: () => "The server's storage is unavailable right now. Reconnecting…",
  4008: () => "The connection fell behind the answer. Reconnecting and resuming…",
  4401: (reason) => `Your sign-in was refused: ${reason || "invalid or expired token"}. Enter a valid token.`,
  4403: () => "This chat belongs to another user. Choose or start another chat.",
};

/** A sentence for a WebSocket close code (and its reason, for 4401). */
export function closeMessage(code: number, reason = ""): string {
  const make = CLOSE_MESSAGES[code];
  return make ? make(reason) : `The connection closed (code ${code}). Reconnecting…`;
}

export function hasCloseMessage(code: number): boolean {
  return Object.hasOwn(CLOSE_MESSAGES, code);
}

/** For REST failures: a sentence per HTTP status. */
export function httpErrorMessage(status: number, detail: string): string {
  const d = detail ? ` (${detail})` : "";
  switch (status) {
    case 401:
      return `Your sign-in was refused${d}. Enter a valid token.`;
    case 403:
      return `You may not access this chat${d}.`;
    case 404:
      return `Not found${d}.`;
    case 409:
      return detail ? `${capitalize(detail)}.` : "An answer is in progress; stop it first.";
    case 422:
    case 400:
      return `The server could not accept this request${d}.`;
    case 429:
      return "Too many requests. Wait a moment and try again.";
    case 0:
      return `The server could not be reached${d}.`;
    default:
      return `The server answered with an error (HTTP ${status})${d}.`;
  }
}

function capitalize(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
