// ontask report: draws the figures, the searchable tables and the lineage tree from the
// JSON block in the page. Data text (instructions, responses, reasons) is untrusted: it
// only ever reaches the page through textContent, never through innerHTML or a URL.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(value, kind) {
    if (value === null || value === undefined) return "";
    if (kind === "num" && typeof value === "number") {
      if (Number.isInteger(value)) return value.toLocaleString("en");
      return Math.abs(value) >= 1000 ? value.toFixed(0) : value.toPrecision(4);
    }
    return String(value);
  }

  // -- figures --------------------------------------------------------------------------------
  function drawFigures() {
    var config = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud"]};
    var jobs = [];
    document.querySelectorAll("[data-figure]").forEach(function (div) {
      var fig = DATA.figures[div.dataset.figure];
      if (!fig) return;
      var layout = Object.assign({}, fig.layout, {template: DATA.template});
      jobs.push(Plotly.newPlot(div, fig.data, layout, config));
    });
    return Promise.all(jobs);
  }

  // -- tables: search across every column, sort by any column ----------------------------------
  function makeTable(holder, spec) {
    var cols = spec.columns;
    var rows = spec.rows.map(function (r, i) {
      return {cells: r, order: i, haystack: r.map(function (c) { return c === null ? "" : String(c); }).join("\u0001").toLowerCase()};
    });
    var state = {query: "", sortBy: -1, desc: false};

    var tools = el("div", "table-tools");
    var search = el("input");
    search.type = "search";
    search.placeholder = "search " + rows.length.toLocaleString("en") + (rows.length === 1 ? " row" : " rows");
    search.setAttribute("aria-label", "search the table");
    var count = el("span", "muted count");
    tools.appendChild(search);
    tools.appendChild(count);
    holder.appendChild(tools);
    if (spec.note) holder.appendChild(el("p", "muted", spec.note));

    var scroller = el("div", "scroller");
    var table = el("table", "data");
    var thead = el("thead");
    var headRow = el("tr");
    cols.forEach(function (c, j) {
      var th = el("th", c.kind, c.label);
      th.title = "sort by " + c.label;
      th.addEventListener("click", function () {
        state.desc = state.sortBy === j ? !state.desc : c.kind === "num";
        state.sortBy = j;
        render();
      });
      headRow.appendChild(th);
    });
    thead.appendChild(headRow);
    var tbody = el("tbody");
    table.appendChild(thead);
    table.appendChild(tbody);
    scroller.appendChild(table);
    holder.appendChild(scroller);

    function compare(a, b) {
      var x = a.cells[state.sortBy], y = b.cells[state.sortBy];
      if (x === y) return a.order - b.order;
      if (x === null || x === undefined) return 1;  // missing values last either way
      if (y === null || y === undefined) return -1;
      var r = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return state.desc ? -r : r;
    }

    function render() {
      var q = state.query.trim().toLowerCase();
      var shown = q ? rows.filter(function (r) { return r.haystack.indexOf(q) !== -1; }) : rows.slice();
      if (state.sortBy >= 0) shown.sort(compare);
      var frag = document.createDocumentFragment();
      shown.forEach(function (r) {
        var tr = el("tr");
        r.cells.forEach(function (v, j) {
          var kind = cols[j].kind;
          var td = el("td", kind);
          if (kind === "long") {
            var div = el("div", "clamp", fmt(v, kind));
            if (v === null || v === undefined) { div.textContent = "missing"; div.classList.add("muted"); }
            td.appendChild(div);
          } else {
            td.textContent = fmt(v, kind);
          }
          tr.appendChild(td);
        });
        tr.addEventListener("click", function () { tr.classList.toggle("open"); });
        frag.appendChild(tr);
      });
      tbody.textContent = "";
      tbody.appendChild(frag);
      headRow.querySelectorAll("th").forEach(function (th, j) {
        th.classList.toggle("sorted", j === state.sortBy);
        th.dataset.dir = j === state.sortBy ? (state.desc ? "desc" : "asc") : "";
      });
      count.textContent = shown.length.toLocaleString("en") + " of " + rows.length.toLocaleString("en") + " rows";
    }

    search.addEventListener("input", function () { state.query = search.value; render(); });
    render();
  }

  // -- lineage tree: nodes are built when their parent is first opened -------------------------
  function makeTree(root, lineage) {
    var children = {};
    lineage.nodes.forEach(function (n) {
      var p = n.parent === null ? "" : n.parent;
      (children[p] = children[p] || []).push(n);
    });

    function editText(e) {
      if (!e) return "";
      if (e.op === "remove") return "remove \u2212 " + e.removed;
      if (e.op === "add") return "add + " + e.added;
      if (e.op === "replace") return "replace \u2212 " + e.removed + "  + " + e.added;
      return e.op;
    }

    function nodeItem(n) {
      var li = el("li", "node status-" + String(n.status).replace(/[^a-z_]/g, ""));
      var kids = children[n.id] || [];
      var head = el("div", "node-head");
      head.setAttribute("role", "button");
      head.tabIndex = 0;
      head.appendChild(el("span", "toggle", kids.length ? "\u25b8" : "\u00b7"));
      head.appendChild(el("span", "hop", n.hop === 0 ? "seed" : "hop " + n.hop));
      head.appendChild(el("span", "badge", n.status));
      if (n.edit) head.appendChild(el("span", "edit op-" + String(n.edit.op).replace(/[^a-z]/g, ""), editText(n.edit)));
      if (kids.length) head.appendChild(el("span", "muted", kids.length + (kids.length === 1 ? " child" : " children")));
      if (n.rows) head.appendChild(el("span", "muted", n.rows + " kept rows"));
      li.appendChild(head);
      var body = el("div", "node-body");
      if (n.task_type) body.appendChild(el("div", "muted", "task type: " + n.task_type));
      body.appendChild(el("div", n.text ? "instruction" : "instruction muted",
        n.text || "(not written: " + (n.status === "not_sampled" ? "not among the sampled states" : n.status) + ")"));
      if (n.reason) body.appendChild(el("div", "reason", "reason: " + n.reason));
      if (n.constraints && n.constraints.length) {
        var ul = el("ul", "constraints");
        n.constraints.forEach(function (c) { ul.appendChild(el("li", null, c)); });
        body.appendChild(ul);
      }
      li.appendChild(body);
      var sub = null;
      function toggle(open) {
        var willOpen = open === undefined ? !li.classList.contains("open") : open;
        if (willOpen && !sub && kids.length) {
          sub = el("ul", "tree");
          kids.forEach(function (k) { sub.appendChild(nodeItem(k)); });
          li.appendChild(sub);
        }
        li.classList.toggle("open", willOpen);
        head.firstChild.textContent = kids.length ? (willOpen ? "\u25be" : "\u25b8") : "\u00b7";
      }
      li._toggle = toggle;
      head.addEventListener("click", function () { toggle(); });
      head.addEventListener("keydown", function (ev) { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); toggle(); } });
      return li;
    }

    (children[""] || []).forEach(function (n) { root.appendChild(nodeItem(n)); });
    document.getElementById("tree-expand").addEventListener("click", function () {
      var opened;  // open level by level until nothing new appears
      do {
        opened = 0;
        root.querySelectorAll("li.node:not(.open)").forEach(function (li) { li._toggle(true); opened++; });
      } while (opened);
    });
    document.getElementById("tree-collapse").addEventListener("click", function () {
      root.querySelectorAll("li.node.open").forEach(function (li) { li._toggle(false); });
    });
  }

  Object.keys(DATA.tables).forEach(function (name) {
    var holder = document.querySelector('[data-table="' + name + '"]');
    if (holder) makeTable(holder, DATA.tables[name]);
  });
  var treeRoot = document.getElementById("lineage-tree");
  if (treeRoot && DATA.lineage) makeTree(treeRoot, DATA.lineage);
  drawFigures().then(function () {
    document.body.dataset.ready = "1";
  }, function (err) {
    console.error("a figure failed to draw: " + err);
  });
})();
