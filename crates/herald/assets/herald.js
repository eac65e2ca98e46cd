// Herald dashboard: small enhancements; every page works without them.
// - forms with data-confirm ask before they are sent;
// - buttons with data-copy copy the text of the element with that id (a new secret);
// - a checkbox with data-select-all="name" checks or clears every checkbox of that name.
document.addEventListener("submit", (event) => {
  const message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.getAttribute("data-copy"));
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(() => {
    button.textContent = "Copied";
  });
});

document.addEventListener("change", (event) => {
  const name = event.target.getAttribute("data-select-all");
  if (!name) return;
  document.querySelectorAll(`input[type=checkbox][name="${CSS.escape(name)}"]`).forEach((box) => {
    box.checked = event.target.checked;
  });
});
