// Apply the saved theme before the first paint (no flash of the wrong colours). A file,
// not an inline script: the page's Content-Security-Policy allows only 'self'.
try {
  var t = localStorage.getItem("chat.theme");
  if (t === "light" || t === "dark") document.documentElement.dataset.theme = t;
} catch (e) {}
