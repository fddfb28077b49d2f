// Browser storage, wrapped so a blocked storage (private mode, tests) never throws.

export interface Credentials {
  token: string;
  /** Dev mode: the user id sent as `user_id`. */
  userId: string | null;
}

const AUTH_KEY = "chat.auth";
const SESSION_KEY = "chat.session";
const THEME_KEY = "chat.theme";

function get(store: () => Storage, key: string): string | null {
  try {
    return store().getItem(key);
  } catch {
    return null;
  }
}

function set(store: () => Storage, key: string, value: string | null): void {
  try {
    if (value === null) store().removeItem(key);
    else store().setItem(key, value);
  } catch {
    /* storage unavailable: the value lives for this page only */
  }
}

const session = (): Storage => window.sessionStorage;
const local = (): Storage => window.localStorage;

export function loadCredentials(): Credentials | null {
  const raw = get(session, AUTH_KEY);
  if (!raw) return null;
  try {
    const v = JSON.parse(raw) as Partial<Credentials>;
    if (typeof v.token !== "string" || !v.token) return null;
    return { token: v.token, userId: typeof v.userId === "string" && v.userId ? v.userId : null };
  } catch {
    return null;
  }
}

export function saveCredentials(creds: Credentials | null): void {
  set(session, AUTH_KEY, creds ? JSON.stringify(creds) : null);
}

export function loadCurrentSession(): string | null {
  return get(session, SESSION_KEY);
}

export function saveCurrentSession(id: string | null): void {
  set(session, SESSION_KEY, id);
}

export type Theme = "light" | "dark";

export function loadTheme(): Theme | null {
  const v = get(local, THEME_KEY);
  return v === "light" || v === "dark" ? v : null;
}

export function saveTheme(theme: Theme): void {
  set(local, THEME_KEY, theme);
}
