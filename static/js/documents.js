// Drag and drop onto the upload area fills the file input; the form still works without it.
(function () {
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("id_files");
  if (!zone || !input) return;
  ["dragenter", "dragover"].forEach(e => zone.addEventListener(e, ev => { ev.preventDefault(); zone.classList.add("over"); }));
  ["dragleave", "drop"].forEach(e => zone.addEventListener(e, ev => { ev.preventDefault(); zone.classList.remove("over"); }));
  zone.addEventListener("drop", ev => { input.files = ev.dataTransfer.files; });
})();
