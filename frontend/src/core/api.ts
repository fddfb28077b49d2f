// REST client for the gateways' /api (sessions and history). fetch is injected.

import type { HistoryItem } from "./protocol";

export interface SessionInfo {
  session_id: string;
  title: string;
  created_at: string;
  last_seen: string;
  answering: boolean;
}

export interface ServerInfo {
  protocol: number;
  node_id: string;
  auth_dev_mode: boolean;
  [key: string]: unknown;
}

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface ApiCredentials {
  token: string;
  /** Dev mode only: sent as the `user_id` query parameter. */
  userId?: string | null;
}

/** A failed call: `status` 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(`HTTP ${status}${detail ? `: ${detail}` : ""}`);
    this.name = "ApiError";
  }
}

export interface Api {
  info(): Promise<ServerInfo>;
  listSessions(): Promise<SessionInfo[]>;
  createSession(title?: string): Promise<SessionInfo>;
  renameSession(sessionId: string, title: string): Promise<SessionInfo>;
  deleteSession(sessionId: string): Promise<void>;
  history(sessionId: string, limit?: number): Promise<HistoryItem[]>;
}

/** `base` is the API root, e.g. `/api` or `http://host:8080/api`. */
export function createApi(base: string, fetchImpl: FetchLike, creds: ApiCredentials | null): Api {
  const root = base.replace(/\/+$/, "");

  const url = (path: string, query: Record<string, string> = {}): string => {
    const params = new URLSearchParams(query);
    if (creds?.userId) params.set("user_id", creds.userId);
    const qs = params.toString();
    return `${root}${path}${qs ? `?${qs}` : ""}`;
  };

  async function call<T>(method: string, path: string, opts: { body?: unknown; query?: Record<string, string>; auth?: boolean } = {}): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json" };
    if (opts.auth !== false && creds) headers.Authorization = `Bearer ${creds.token}`;
    let body: string | undefined;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    const target = opts.auth === false ? `${root}${path}` : url(path, opts.query);
    let res: Response;
    try {
      res = await fetchImpl(target, { method, headers, body, credentials: "omit" });
    } catch (err) {
      throw new ApiError(0, err instanceof Error ? err.message : String(err));
    }
    if (!res.ok) throw new ApiError(res.status, await readDetail(res));
    if (res.status === 204) return undefined as T;
    try {
      return (await res.json()) as T;
    } catch {
      throw new ApiError(res.status, "the server's answer is not JSON");
    }
  }

  const enc = encodeURIComponent;
  return {
    info: () => call<ServerInfo>("GET", "/info", { auth: false }),
    listSessions: async () => (await call<{ sessions: SessionInfo[] }>("GET", "/sessions")).sessions ?? [],
    createSession: (title?: string) => call<SessionInfo>("POST", "/sessions", { body: title ? { title } : {} }),
    renameSession: (id, title) => call<SessionInfo>("PATCH", `/sessions/${enc(id)}`, { body: { title } }),
    deleteSession: (id) => call<void>("DELETE", `/sessions/${enc(id)}`),
    history: async (id, limit = 200) =>
      (await call<{ messages: HistoryItem[] }>("GET", `/sessions/${enc(id)}/history`, { query: { limit: String(limit) } })).messages ?? [],
  };
}

async function readDetail(res: Response): Promise<string> {
  try {
    const data: unknown = await res.json();
    if (typeof data === "object" && data !== null && "detail" in data) {
      const detail = (data as { detail: unknown }).detail;
      if (typeof detail === "string") return detail;
      return JSON.stringify(detail);
    }
  } catch {
    /* not JSON */
  }
  return res.statusText || "";
}

/** Newest activity first. */
export function sortSessions(sessions: readonly SessionInfo[]): SessionInfo[] {
  const t = (s: SessionInfo): number => Date.parse(s.last_seen || s.created_at) || 0;
  return [...sessions].sort((a, b) => t(b) - t(a));
}

export function sessionTitle(s: SessionInfo): string {
  return s.title.trim() || "New chat";
}
