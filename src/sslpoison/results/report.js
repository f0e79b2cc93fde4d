for (const th of document.querySelectorAll("table.sortable th")) {
  th.addEventListener("click", () => {
    const table = th.closest("table"), body = table.tBodies[0];
    const i = [...th.parentNode.children].indexOf(th);
    const dir = th.dataset.dir === "asc" ? "desc" : "asc";
    for (const h of table.querySelectorAll("th")) delete h.dataset.dir;
    th.dataset.dir = dir;
    const key = (tr) => {
      const td = tr.children[i];
      if (td.dataset.v !== undefined) return parseFloat(td.dataset.v);
      const text = td.textContent.trim();
      return text === "-" ? null : text;
    };
    const rows = [...body.rows].sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);
      const r = typeof x === "number" && typeof y === "number" ? x - y
        : String(x).localeCompare(String(y), undefined, {numeric: true});
      return dir === "asc" ? r : -r;
    });
    body.append(...rows);
  });
}
