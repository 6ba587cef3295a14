// The dashboard's only script: confirm bulk actions, show times in the viewer's zone.
"use strict";
document.addEventListener("submit", (event) => {
  const question = event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});
document.addEventListener("DOMContentLoaded", () => {
  for (const node of document.querySelectorAll("time[datetime]")) {
    const stamp = node.getAttribute("datetime");
    // Stored times are UTC; a stamp without an offset is read as UTC too.
    const when = new Date(/(Z|[+-]\d\d:\d\d)$/.test(stamp) ? stamp : stamp + "Z");
    if (!Number.isNaN(when.getTime())) {
      node.title = node.textContent;
      node.textContent = when.toLocaleString();
    }
  }
});
