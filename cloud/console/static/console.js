// El Silencio console: keyboard shortcuts for the review page, the searchable species picker, and
// table filters. Plain JavaScript, no build step; every control also works without it (forms).
(function () {
  "use strict";

  function typing(el) {
    if (!el) return false;
    var tag = el.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable;
  }

  function submit(form) {
    if (!form) return;
    if (form.requestSubmit) form.requestSubmit(); else form.submit();
  }

  // ---------------------------------------------------------------- species picker (relabel)
  function setupPicker() {
    var search = document.getElementById("relabel-search");
    var list = document.getElementById("relabel-species");
    var count = document.getElementById("relabel-count");
    if (!search || !list) return;
    var form = document.getElementById("relabel-form");

    function visible() {
      return Array.prototype.filter.call(list.options, function (o) { return !o.hidden; });
    }

    function filter() {
      var terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
      Array.prototype.forEach.call(list.options, function (o) {
        var text = o.getAttribute("data-search") || "";
        o.hidden = !terms.every(function (t) { return text.indexOf(t) !== -1; });
      });
      var shown = visible();
      if (shown.length && (list.selectedIndex < 0 || list.options[list.selectedIndex].hidden)) {
        list.value = shown[0].value;
      } else if (!shown.length) {
        list.selectedIndex = -1;
      }
      if (count) count.textContent = terms.length ? shown.length + " matching species" : "";
    }

    search.addEventListener("input", filter);
    search.addEventListener("keydown", function (e) {
      if (e.key === "ArrowDown") {
        e.preventDefault();
        if (visible().length) { if (list.selectedIndex < 0) list.value = visible()[0].value; list.focus(); }
      } else if (e.key === "Enter") {
        e.preventDefault();
        if (list.selectedIndex >= 0 && !list.options[list.selectedIndex].hidden) submit(form);
      } else if (e.key === "Escape") {
        search.blur();
      }
    });
    list.addEventListener("keydown", function (e) {
      if (e.key === "Enter") { e.preventDefault(); if (list.selectedIndex >= 0) submit(form); }
      else if (e.key === "Escape") { search.focus(); }
    });
    list.selectedIndex = -1;
  }

  // ---------------------------------------------------------------- review shortcuts
  function setupReview() {
    var clip = document.getElementById("clip");
    if (!clip) return;
    var audio = document.getElementById("player");
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) return;
      var key = e.key.toLowerCase();
      if (key === "a") {
        e.preventDefault();
        var accept = document.getElementById("accept");
        if (accept && !accept.disabled) submit(document.getElementById("accept-form"));
      } else if (key === "r") {
        e.preventDefault();
        var s = document.getElementById("relabel-search");
        if (s) { s.focus(); s.select(); }
      } else if (key === "n") {
        e.preventDefault();
        submit(document.getElementById("not-animal-form"));
      } else if (key === "s") {
        e.preventDefault();
        submit(document.getElementById("skip-form"));
      } else if (/^[1-9]$/.test(key)) {
        var radio = document.querySelector('#accept-form input[data-key="' + key + '"]');
        if (radio) { e.preventDefault(); radio.checked = true; }
      } else if (key === " " && audio && e.target.tagName !== "BUTTON" && e.target.tagName !== "A") {
        e.preventDefault();
        if (audio.paused) audio.play(); else audio.pause();
      }
    });
  }

  // ---------------------------------------------------------------- table filter (species index)
  function setupTableFilters() {
    Array.prototype.forEach.call(document.querySelectorAll("input[data-filter-table]"), function (input) {
      var table = document.getElementById(input.getAttribute("data-filter-table"));
      if (!table) return;
      input.addEventListener("input", function () {
        var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
        Array.prototype.forEach.call(table.querySelectorAll("tr[data-search]"), function (row) {
          var text = row.getAttribute("data-search");
          row.hidden = !terms.every(function (t) { return text.indexOf(t) !== -1; });
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupPicker();
    setupReview();
    setupTableFilters();
  });
})();
