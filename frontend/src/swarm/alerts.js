// The live alert list, one markup for the swarm page and the health page (the same as the server's:
// `<li class="alert alert-SEVERITY">message <span class="muted small">since AGE</span></li>`).
// Built with textContent only: alert text never becomes HTML. Newest first.
import { formatAge } from "./state.js";

export function renderAlerts(list, swarm, nowSeconds = Date.now() / 1000) {
  const alerts = [...swarm.alerts.values()].sort((a, b) => b.raised_at - a.raised_at);
  list.replaceChildren(
    ...alerts.map((alert) => {
      const li = document.createElement("li");
      li.className = `alert alert-${alert.severity}`;
      li.dataset.alertId = alert.id;
      const when = document.createElement("span");
      when.className = "muted small";
      when.textContent = `since ${formatAge(nowSeconds + swarm.serverSkew - alert.raised_at)}`;
      li.append(`${alert.message} `, when);
      return li;
    }),
  );
  return alerts.length;
}
