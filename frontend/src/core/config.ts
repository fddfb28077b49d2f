// Where the app finds the servers: same origin by default, overridden by /config.json.

export interface Endpoints {
  /** Full WebSocket URL up to and including /ws/chat. */
  wsUrl: string;
  /** REST root, e.g. /api. */
  apiBase: string;
}

export interface LocationLike {
  protocol: string;
  host: string;
}

export function defaultEndpoints(loc: LocationLike): Endpoints {
  const scheme = loc.protocol === "https:" ? "wss" : "ws";
  return { wsUrl: `${scheme}://${loc.host}/ws/chat`, apiBase: "/api" };
}

/** Apply a parsed /config.json over the defaults; anything malformed is ignored. */
export function mergeConfig(defaults: Endpoints, raw: unknown): Endpoints {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return defaults;
  const r = raw as Record<string, unknown>;
  const pick = (v: unknown, fallback: string): string => (typeof v === "string" && v.trim() ? v.trim() : fallback);
  return { wsUrl: pick(r.wsUrl, defaults.wsUrl), apiBase: pick(r.apiBase, defaults.apiBase) };
}

/** The chat URL for one session; the token is never in it (subprotocol instead). */
export function chatUrl(wsUrl: string, sessionId: string, userId?: string | null): string {
  const params = new URLSearchParams({ session_id: sessionId });
  if (userId) params.set("user_id", userId);
  return `${wsUrl}${wsUrl.includes("?") ? "&" : "?"}${params.toString()}`;
}

/** A fresh session id: 1..64 of [A-Za-z0-9_-] (docs/protocol.md §1). */
export function newSessionId(random: (bytes: number) => Uint8Array): string {
  return `s-${Array.from(random(9), (b) => b.toString(16).padStart(2, "0")).join("")}`;
}
