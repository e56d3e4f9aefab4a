// The theme's download button links to the page's source as Sphinx copied it (_sources/...).
// For a chapter that source is the executed notebook, outputs included: say so, and make the
// link save the file instead of opening its JSON in a new tab.
document.addEventListener("DOMContentLoaded", () => {
  for (const link of document.querySelectorAll("a.btn-download-source-button")) {
    if (!link.getAttribute("href").endsWith(".ipynb")) continue;
    link.setAttribute("download", "");
    link.removeAttribute("target");
    link.setAttribute("title", "Download the executed notebook (.ipynb, outputs included)");
    link.setAttribute("data-bs-original-title", "Download the executed notebook (.ipynb, outputs included)");
    const label = link.querySelector(".btn__text-container");
    if (label) label.textContent = "executed notebook (.ipynb)";
  }
});
