// "Copy" buttons next to commands (the Join page). The buttons are hidden in the HTML and shown here, so a
// page without JavaScript (or without a clipboard) never offers a button that does nothing.
export function startCopyButtons(root = document) {
  if (!navigator.clipboard) return;
  for (const button of root.querySelectorAll("[data-copy-target]")) {
    const source = root.querySelector(button.dataset.copyTarget);
    if (!source) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.textContent = "Copied";
      } catch {
        button.textContent = "Select and copy by hand";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }
}
