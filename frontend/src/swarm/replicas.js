// The replicas and averaging panel: per reported cell its live replicas (from the coverage reading), the
// newest step a replica reports and how long ago its newest state was averaged; the averaging rounds of
// the online nodes. The server sends when a state was averaged (`averaged_at`), never an age, so ages tick
// here every second between updates. Built with textContent only (uids never become HTML).
import { formatAge } from "./state.js";

export const NEVER_AVERAGED = "never (no other replica)";

function gridCells(grid) {
  return (grid || []).reduce((cells, side) => cells * side, 1);
}

// What the panel shows, without the DOM: the summary line, one row per listed cell, the note under it.
export function replicaView(swarm, nowSeconds = Date.now() / 1000) {
  const { cells, cells_count: count, rounds_completed: completed, rounds_failed: failed } = swarm.replicas;
  const covered = swarm.coverage.cells || {};
  const replicated = Object.values(covered).filter((n) => n >= 2).length;
  const total = swarm.project ? gridCells(swarm.project.grid) : 0;
  const rows = cells.map((cell) => ({
    uid: cell.uid,
    replicas: covered[cell.uid] ?? 0,
    step: cell.step,
    averagedAt: cell.averaged_at,
    age: ageText(cell.averaged_at, swarm, nowSeconds),
  }));
  return {
    summary: `${replicated} of ${total} cells have two or more live replicas; averaging rounds: ${completed} completed, ${failed} failed (online nodes, since they started).`,
    rows,
    note: count > cells.length ? `The ${cells.length} stalest of ${count} cells.` : "",
  };
}

function ageText(averagedAt, swarm, nowSeconds) {
  return averagedAt == null ? NEVER_AVERAGED : formatAge(nowSeconds + swarm.serverSkew - averagedAt);
}

function td(text) {
  const cell = document.createElement("td");
  cell.textContent = text;
  return cell;
}

// Rebuilds the rows when the summary or the coverage changed; otherwise only the ages move on.
export class ReplicasPanel {
  constructor(root) {
    this.summary = root.querySelector('[data-part="replicas-summary"]');
    this.table = root.querySelector('[data-part="replicas-table"]');
    this.rows = root.querySelector('[data-part="replicas"]');
    this.note = root.querySelector('[data-part="replicas-note"]');
    this.empty = root.querySelector('[data-part="replicas-empty"]');
    this.shown = { replicas: null, coverage: null };
  }

  update(swarm, nowSeconds = Date.now() / 1000) {
    const view = replicaView(swarm, nowSeconds);
    this.summary.textContent = view.summary;
    this.note.textContent = view.note;
    this.table.hidden = view.rows.length === 0;
    this.empty.hidden = view.rows.length > 0;
    const same = this.shown.replicas === swarm.replicas && this.shown.coverage === swarm.coverage;
    if (same) {
      for (const row of this.rows.children) {
        const at = row.dataset.averagedAt;
        row.lastElementChild.textContent = ageText(at === "" ? null : Number(at), swarm, nowSeconds);
      }
      return;
    }
    this.shown = { replicas: swarm.replicas, coverage: swarm.coverage };
    this.rows.replaceChildren(
      ...view.rows.map((row) => {
        const tr = document.createElement("tr");
        tr.dataset.uid = row.uid;
        tr.dataset.averagedAt = row.averagedAt ?? "";
        const uid = document.createElement("td");
        const code = document.createElement("code");
        code.textContent = row.uid;
        uid.append(code);
        const age = td(row.age);
        if (row.averagedAt == null) age.className = "muted";
        tr.append(uid, td(String(row.replicas)), td(String(row.step)), age);
        return tr;
      }),
    );
  }
}
