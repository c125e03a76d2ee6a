// Until a page's own module has run, the forms it handles would submit themselves to the server: a reload that
// loses what was typed, or a tap on "join" that does nothing on a slow phone. Their submit buttons wait, disabled,
// until the modules have run (module scripts run before DOMContentLoaded). A classic script, so it runs at once.
(() => {
  const waiting = [...document.querySelectorAll('form:not([method]) button[type="submit"]')]
    .filter((button) => !button.disabled);
  for (const button of waiting) button.disabled = true;
  document.addEventListener('DOMContentLoaded', () => {
    for (const button of waiting) button.disabled = false;
  });
})();
