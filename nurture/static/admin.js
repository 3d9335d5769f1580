// nurture admin: the few things plain forms cannot do (live template preview, import progress).
(function () {
  "use strict";
  var token = document.querySelector('meta[name="csrf-token"]');

  function post(url, body) {
    return fetch(url, {method: "POST", body: body, credentials: "same-origin",
                       headers: {"X-CSRFToken": token ? token.content : ""}}).then(function (r) { return r.json(); });
  }

  // Template editor: render the unsaved source for the chosen lead, debounced.
  var preview = document.getElementById("preview");
  var form = document.getElementById("template-form");
  if (preview && form) {
    var timer = null;
    var refresh = function () {
      var body = new FormData(form);
      body.set("lead_id", document.getElementById("preview-lead").value);
      post(preview.dataset.url, body).then(function (data) {
        var error = document.getElementById("preview-error");
        if (data.error) {
          error.textContent = (data.line ? "Line " + data.line + ": " : "") + data.error;
          error.hidden = false;
          return;
        }
        error.hidden = true;
        document.getElementById("preview-subject").textContent = data.subject;
        document.getElementById("preview-desktop").srcdoc = data.html;
        document.getElementById("preview-phone").srcdoc = data.html;
        document.getElementById("preview-text").textContent = data.text;
        preview.dataset.rendered = "yes";
      });
    };
    var later = function () { clearTimeout(timer); timer = setTimeout(refresh, 500); };
    form.addEventListener("input", later);
    document.getElementById("preview-lead").addEventListener("change", refresh);
    refresh();
    var source = document.getElementById("f-mjml");
    var line = parseInt(source.dataset.errorLine, 10);
    if (line) {  // put the cursor on the line with the error
      var lines = source.value.split("\n");
      var start = lines.slice(0, line - 1).join("\n").length + (line > 1 ? 1 : 0);
      source.focus();
      source.setSelectionRange(start, start + (lines[line - 1] || "").length);
      source.scrollTop = Math.max(0, (line - 5) * 18);
    }
  }

  // CSV import: poll the job's progress until it is done.
  var progress = document.getElementById("import-progress");
  if (progress) {
    var poll = function () {
      fetch(progress.dataset.url, {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (s) {
        var bar = progress.querySelector("progress");
        if (s.total) { bar.max = s.total; bar.value = s.done; }
        document.getElementById("import-state").textContent = s.message;
        if (s.state === "done" || s.state === "failed") { window.location.reload(); return; }
        setTimeout(poll, 1000);
      });
    };
    if (progress.dataset.state !== "done" && progress.dataset.state !== "failed") { setTimeout(poll, 700); }
  }
})();
