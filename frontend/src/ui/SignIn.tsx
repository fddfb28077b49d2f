import { useState, type FormEvent, type ReactNode } from "react";

import type { Credentials } from "./storage";

export function SignIn({
  devMode,
  error,
  onSubmit,
  themeButton,
}: {
  devMode: boolean;
  error: string | null;
  onSubmit: (creds: Credentials) => Promise<void>;
  themeButton: ReactNode;
}) {
  const [userId, setUserId] = useState("alice");
  const [token, setToken] = useState("");
  const [busy, setBusy] = useState(false);
  const [localError, setLocalError] = useState<string | null>(null);

  const submit = async (ev: FormEvent): Promise<void> => {
    ev.preventDefault();
    setLocalError(null);
    let creds: Credentials;
    if (devMode) {
      const uid = userId.trim();
      if (!/^[A-Za-z0-9_.@-]{1,128}$/.test(uid)) {
        setLocalError("That user id is not valid: use 1 to 128 letters, digits or _ . @ - (no spaces).");
        return;
      }
      creds = { token: "dev-token", userId: uid };
    } else {
      const t = token.trim().replace(/^Bearer\s+/i, "");
      if (!t) {
        setLocalError("Paste a token first.");
        return;
      }
      creds = { token: t, userId: null };
    }
    setBusy(true);
    try {
      await onSubmit(creds);
    } finally {
      setBusy(false);
    }
  };

  const shown = localError ?? error;
  return (
    <div className="signin-page">
      <div className="signin-theme">{themeButton}</div>
      <form className="signin" onSubmit={(e) => void submit(e)}>
        <h1>Chat</h1>
        {devMode ? (
          <>
            <p className="hint">Development mode: pick any user id.</p>
            <label htmlFor="login-user">User id</label>
            <input
              id="login-user"
              data-testid="login-user"
              list="login-users"
              autoComplete="username"
              value={userId}
              onChange={(e) => setUserId(e.target.value)}
            />
            <datalist id="login-users">
              <option value="alice" />
              <option value="bob" />
              <option value="carol" />
            </datalist>
          </>
        ) : (
          <>
            <label htmlFor="login-token">Access token</label>
            <textarea
              id="login-token"
              data-testid="login-token"
              rows={4}
              spellCheck={false}
              autoComplete="off"
              placeholder="Paste your JWT"
              value={token}
              onChange={(e) => setToken(e.target.value)}
            />
          </>
        )}
        {shown ? (
          <p className="login-error" data-testid="login-error" role="alert">
            {shown}
          </p>
        ) : null}
        <button type="submit" className="primary" data-testid="login-submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
    </div>
  );
}
