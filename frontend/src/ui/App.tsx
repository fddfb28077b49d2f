import { useCallback, useEffect, useState } from "react";

import { ApiError, createApi } from "../core/api";
import { defaultEndpoints, mergeConfig, type Endpoints } from "../core/config";
import { httpErrorMessage } from "../core/errors";
import { ChatApp } from "./ChatApp";
import { useTheme } from "./hooks";
import { SignIn } from "./SignIn";
import { loadCredentials, saveCredentials, saveCurrentSession, type Credentials } from "./storage";

type Phase = { kind: "boot" } | { kind: "signin" } | { kind: "chat"; creds: Credentials };

async function loadEndpoints(): Promise<Endpoints> {
  const defaults = defaultEndpoints(window.location);
  try {
    const res = await fetch("/config.json", { cache: "no-store" });
    if (!res.ok) return defaults;
    return mergeConfig(defaults, await res.json());
  } catch {
    return defaults; // missing or not JSON: same origin
  }
}

export function App() {
  const [theme, toggleTheme] = useTheme();
  const [phase, setPhase] = useState<Phase>({ kind: "boot" });
  const [endpoints, setEndpoints] = useState<Endpoints | null>(null);
  const [devMode, setDevMode] = useState(false);
  const [signinError, setSigninError] = useState<string | null>(null);

  useEffect(() => {
    void (async () => {
      const ep = await loadEndpoints();
      let dev = false;
      try {
        dev = (await createApi(ep.apiBase, (u, i) => fetch(u, i), null).info()).auth_dev_mode === true;
      } catch (err) {
        setSigninError(err instanceof ApiError ? httpErrorMessage(err.status, err.detail) : String(err));
      }
      setEndpoints(ep);
      setDevMode(dev);
      const creds = loadCredentials();
      if (creds && (!dev || creds.userId)) setPhase({ kind: "chat", creds });
      else setPhase({ kind: "signin" });
    })();
  }, []);

  const signIn = useCallback(
    async (creds: Credentials): Promise<void> => {
      if (!endpoints) return;
      try {
        await createApi(endpoints.apiBase, (u, i) => fetch(u, i), creds).listSessions();
      } catch (err) {
        if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
          const text = httpErrorMessage(err.status, err.detail);
          setSigninError(devMode ? text.replace("Enter a valid token.", "Choose a valid user id.") : text);
          return;
        }
        // Any other failure: let the chat's WebSocket be the judge.
      }
      saveCredentials(creds);
      setSigninError(null);
      setPhase({ kind: "chat", creds });
    },
    [endpoints, devMode],
  );

  const signOut = useCallback((message: string | null) => {
    saveCredentials(null);
    saveCurrentSession(null);
    setSigninError(message);
    setPhase({ kind: "signin" });
  }, []);

  const onSignOut = useCallback(() => signOut(null), [signOut]);
  // In dev mode the token is fixed: what the user can change is the user id.
  const onRefused = useCallback(
    (text: string) => signOut(devMode ? text.replace("Enter a valid token.", "Choose a valid user id.") : text),
    [signOut, devMode],
  );

  const themeButton = (
    <button
      type="button"
      className="icon theme-toggle"
      data-testid="theme-toggle"
      aria-label={theme === "dark" ? "Switch to light mode" : "Switch to dark mode"}
      title={theme === "dark" ? "Light mode" : "Dark mode"}
      onClick={toggleTheme}
    >
      {theme === "dark" ? "☀" : "☾"}
    </button>
  );

  if (phase.kind === "boot" || !endpoints) {
    return <div className="boot">Loading…</div>;
  }
  if (phase.kind === "signin") {
    return <SignIn devMode={devMode} error={signinError} onSubmit={signIn} themeButton={themeButton} />;
  }
  return (
    <ChatApp
      key={`${phase.creds.token}|${phase.creds.userId ?? ""}`}
      endpoints={endpoints}
      creds={phase.creds}
      devMode={devMode}
      onSignOut={onSignOut}
      onRefused={onRefused}
      themeButton={themeButton}
    />
  );
}
