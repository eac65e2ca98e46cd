// Herald dashboard: small enhancements; every page works without them.
// - forms with data-confirm ask before they are sent (and say so in their `confirmed` field,
//   which spares them the server's own page that asks where there is no JavaScript);
// - buttons with data-copy copy the text of the element with that id (a new secret);
// - a checkbox with data-select-all="name" checks or clears every checkbox of that name;
// - a form being sent cannot be sent again by a second click (two webhooks for one).
document.addEventListener("submit", (event) => {
  const form = event.target;
  const message = form.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
    return;
  }
  if (message && form.elements.confirmed) form.elements.confirmed.value = "yes";
  if (form.dataset.sending) {
    event.preventDefault();
    return;
  }
  form.dataset.sending = "1";
  // Sent again after Back (the page restored from the cache), the form works as before.
  window.addEventListener("pageshow", () => delete form.dataset.sending, { once: true });
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.getAttribute("data-copy"));
  if (!source) return;
  const failed = () => {
    // No clipboard here (plain http:// on another host): select the text to copy by hand.
    const range = document.createRange();
    range.selectNodeContents(source);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    button.textContent = "Selected: press Ctrl+C";
  };
  if (!navigator.clipboard) return failed();
  navigator.clipboard.writeText(source.textContent.trim()).then(() => {
    button.textContent = "Copied";
  }, failed);
});

document.addEventListener("change", (event) => {
  const name = event.target.getAttribute("data-select-all");
  if (!name) return;
  document.querySelectorAll(`input[type=checkbox][name="${CSS.escape(name)}"]`).forEach((box) => {
    box.checked = event.target.checked;
  });
});
