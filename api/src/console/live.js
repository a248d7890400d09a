// kenko console: live updates over Server-Sent Events. Values are set as text, never markup.
"use strict";

for (const table of document.querySelectorAll("table[data-live-tail]")) {
  const body = table.tBodies[0];
  const source = new EventSource(table.dataset.liveTail);
  source.addEventListener("reading", (event) => {
    const reading = JSON.parse(event.data);
    const row = body.insertRow(0);
    for (const text of [reading.time, reading.metric, reading.value, reading.unit]) {
      row.insertCell().textContent = String(text);
    }
    while (body.rows.length > 50) {
      body.deleteRow(-1);
    }
  });
}

const alerts = document.querySelector("[data-live-alerts]");
if (alerts) {
  const source = new EventSource(alerts.dataset.liveAlerts);
  source.addEventListener("alert", () => {
    source.close();
    window.location.reload();
  });
}
