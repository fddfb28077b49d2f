import { useCallback, useEffect, useState, useSyncExternalStore } from "react";

import type { ChatClient, ChatSnapshot } from "../core/client";
import { loadTheme, saveTheme, type Theme } from "./storage";

/** The client's snapshot; chunk bursts re-render at most once per animation frame. */
export function useChatSnapshot(client: ChatClient): ChatSnapshot {
  const subscribe = useCallback(
    (notify: () => void) => {
      let frame = 0;
      const unsubscribe = client.subscribe(() => {
        if (frame === 0) {
          frame = requestAnimationFrame(() => {
            frame = 0;
            notify();
          });
        }
      });
      return () => {
        unsubscribe();
        if (frame !== 0) cancelAnimationFrame(frame);
      };
    },
    [client],
  );
  return useSyncExternalStore(subscribe, () => client.getSnapshot());
}

/** Date.now(), refreshed every `intervalMs` while `active` (for countdowns). */
export function useNow(active: boolean, intervalMs = 250): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!active) return;
    setNow(Date.now());
    const id = window.setInterval(() => setNow(Date.now()), intervalMs);
    return () => window.clearInterval(id);
  }, [active, intervalMs]);
  return active ? now : Date.now();
}

function systemTheme(): Theme {
  return window.matchMedia?.("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

/** Follows prefers-color-scheme until the user picks one (kept in localStorage). */
export function useTheme(): [Theme, () => void] {
  const [chosen, setChosen] = useState<Theme | null>(() => loadTheme());
  const [system, setSystem] = useState<Theme>(() => systemTheme());
  useEffect(() => {
    const mq = window.matchMedia?.("(prefers-color-scheme: dark)");
    if (!mq) return;
    const onChange = (): void => setSystem(mq.matches ? "dark" : "light");
    mq.addEventListener("change", onChange);
    return () => mq.removeEventListener("change", onChange);
  }, []);
  const theme = chosen ?? system;
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
  }, [theme]);
  const toggle = useCallback(() => {
    const next: Theme = theme === "dark" ? "light" : "dark";
    saveTheme(next);
    setChosen(next);
  }, [theme]);
  return [theme, toggle];
}

/** Whether a CSS media query matches, kept up to date. */
export function useMediaQuery(query: string): boolean {
  const [matches, setMatches] = useState(() => window.matchMedia?.(query).matches ?? false);
  useEffect(() => {
    const mq = window.matchMedia?.(query);
    if (!mq) return;
    const onChange = (): void => setMatches(mq.matches);
    onChange();
    mq.addEventListener("change", onChange);
    return () => mq.removeEventListener("change", onChange);
  }, [query]);
  return matches;
}
