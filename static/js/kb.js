// Small behaviours for every page, wired here rather than in inline handlers (the Content-Security-Policy
// refuses inline script): a <select data-autosubmit> submits its form when changed, and a
// <form data-confirm="question"> asks before it is sent.
document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-autosubmit]");
  if (select && select.form) select.form.requestSubmit();
});
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
}, true);
