// Keeps a credit leaderboard table current: re-reads /api/v1/credit/leaderboard every 30 s (the board only
// changes when heartbeats bring receipts) and redraws its rows as text, never as HTML.
const PERIOD_MS = 30_000;

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

// Pure: what one row shows (the profile link, the name as text, credit rounded as the page does).
export function rowModel(user) {
  return {
    rank: String(Number(user.rank)),
    href: `/credit/users/${Number(user.id)}/`,
    name: String(user.name),
    total: Number(user.total_credit).toFixed(1),
    rac: Number(user.recent_average_credit).toFixed(2),
  };
}

export function leaderboardUrl(project) {
  return `/api/v1/credit/leaderboard${project ? `?project=${encodeURIComponent(project)}` : ""}`;
}

export function renderRows(tbody, users) {
  const rows = users.map((user) => {
    const row = rowModel(user);
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    const link = document.createElement("a");
    link.href = row.href;
    link.textContent = row.name;
    name.append(link);
    tr.append(cell(row.rank), name, cell(row.total), cell(row.rac));
    return tr;
  });
  tbody.replaceChildren(...rows);
}

export function startLiveLeaderboard(table) {
  const tbody = table.querySelector("tbody");
  const url = leaderboardUrl(table.dataset.project || "");
  async function refresh() {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.ok) renderRows(tbody, (await response.json()).users || []);
    } catch {
      // offline for a moment: keep the rows shown and try again at the next period
    }
  }
  setInterval(refresh, PERIOD_MS);
}
