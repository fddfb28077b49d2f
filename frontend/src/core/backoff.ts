// Reconnect policy (docs/protocol.md §5 and §8 step 5).

export const BACKOFF_BASE_MS = 250;
export const BACKOFF_CAP_MS = 10_000;

/** Close codes after which reconnecting as is would only fail again. */
export const NO_RETRY_CLOSE_CODES: ReadonlySet<number> = new Set([1008, 1009, 4401, 4403]);
export const RESTART_CLOSE_CODE = 1012;

/** Upper bound of the delay before reconnect attempt `attempt` (0-based). */
export function backoffCeiling(attempt: number): number {
  return Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, Math.min(attempt, 30)));
}

/** Full jitter: uniform in [0, ceiling), so the clients of a restarted node spread out. */
export function backoffDelay(attempt: number, random: () => number): number {
  return Math.floor(random() * backoffCeiling(attempt));
}

export type CloseDecision =
  | { kind: "never" } // do not reconnect without changing something
  | { kind: "refused" } // 4401: the token was refused; sign in again
  | { kind: "reconnect"; delayMs: number };

export function closeDecision(code: number, attempt: number, random: () => number): CloseDecision {
  if (code === 4401) return { kind: "refused" };
  if (NO_RETRY_CLOSE_CODES.has(code)) return { kind: "never" };
  if (code === RESTART_CLOSE_CODE) return { kind: "reconnect", delayMs: 0 };
  return { kind: "reconnect", delayMs: backoffDelay(attempt, random) };
}
