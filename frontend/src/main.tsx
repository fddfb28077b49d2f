import { createRoot } from "react-dom/client";

import { App } from "./ui/App";
import { installDebugHook } from "./ui/debug";
import "./ui/style.css";

installDebugHook();
const root = document.getElementById("root");
if (root) createRoot(root).render(<App />);
