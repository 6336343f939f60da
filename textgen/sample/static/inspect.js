"use strict";
// The inspection viewer, shared by `textgen inspect --format html` and the Inspect tab of
// `textgen serve`. It takes the data of textgen.inspect_report.report_data (see docs/inspect.md)
// and needs nothing from outside the page.
(function () {
  const SURPRISE_FULL = 8; // nats at which the surprise colour is at its strongest

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function shown(ch) { return ch === "\n" ? "↵" : ch === " " ? "␣" : ch === "\t" ? "⇥" : ch; }

  function surpriseColour(s) {
    if (s === null || s === undefined) return "";
    const t = Math.min(Math.max(s, 0) / SURPRISE_FULL, 1);
    return "rgba(214, 39, 40, " + (0.85 * t).toFixed(3) + ")";
  }

  // Blue below zero, red above, white at zero; `scale` is the largest |value| over the text.
  function activationColour(v, scale) {
    const t = scale > 0 ? Math.max(-1, Math.min(1, v / scale)) : 0;
    return t >= 0 ? "rgba(214, 39, 40, " + (0.85 * t).toFixed(3) + ")"
      : "rgba(31, 90, 200, " + (-0.85 * t).toFixed(3) + ")";
  }

  function render(root, data) {
    root.textContent = "";
    root.classList.add("tgi");
    const chars = Array.from(data.text); // code points, as Python counts characters
    const textBox = el("div", "tgi-text");
    const side = el("div", "tgi-side");
    const tip = el("div", "tgi-tip");
    tip.hidden = true;
    const spans = new Array(chars.length);
    const all = document.createDocumentFragment();
    chars.forEach((ch, i) => {
      const span = el("span", ch === "\n" ? "tgi-nl" : "", ch === "\n" ? "↵\n" : ch);
      span.tgiIndex = i;
      spans[i] = span;
      all.append(span);
    });
    textBox.append(all);

    let picked = null; // null: colour by surprise; else an activation key such as "c213"
    const legend = el("div", "tgi-legend");
    const scale = el("div", "tgi-scale");
    const caption = el("p");
    const buttons = [];

    function paint() {
      buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.key === (picked || ""))));
      if (picked === null) {
        spans.forEach((s, i) => { s.style.backgroundColor = surpriseColour(data.surprise[i]); });
        legend.style.background = "linear-gradient(to right, #fff, " + surpriseColour(SURPRISE_FULL) + ")";
        scale.replaceChildren(el("span", "", "0 nats"), el("span", "", SURPRISE_FULL + "+ nats"));
        caption.textContent = "Colour: surprise, −log p of each character.";
        return;
      }
      const values = data.activations[picked];
      let top = 0;
      for (const v of values) top = Math.max(top, Math.abs(v));
      spans.forEach((s, i) => { s.style.backgroundColor = activationColour(values[i], top); });
      legend.style.background = "linear-gradient(to right, " + activationColour(-1, 1) + ", #fff, "
        + activationColour(1, 1) + ")";
      scale.replaceChildren(el("span", "", (-top).toFixed(3)), el("span", "", "0"),
        el("span", "", "+" + top.toFixed(3)));
      caption.textContent = "Colour: activation of " + picked[0] + " " + picked.slice(1)
        + " (blue below zero, red above).";
    }

    function button(label, key, title) {
      const b = el("button", key ? "tgi-cell" : "tgi-surprise", label);
      b.dataset.key = key || "";
      if (title) b.title = title;
      b.addEventListener("click", () => { picked = key || null; paint(); });
      buttons.push(b);
      return b;
    }

    const mean = data.mean_surprise === null ? "–" : data.mean_surprise.toFixed(3);
    side.append(
      el("p", "", data.characters.toLocaleString() + " characters · " + data.cell + " layer "
        + data.layer + " of " + data.layers + ", " + data.units + " cells · mean surprise "
        + mean + " nats"),
      button("surprise"), caption, legend, scale,
      el("h3", "", "Cells that follow a feature"),
      el("p", "", "Pearson's r of each cell's activation with the feature over the text."));
    for (const f of data.features) {
      const box = el("div", "tgi-feature");
      box.dataset.feature = f.name;
      box.append(el("h3", "", f.name), el("p", "", f.description
        + (f.inside === null ? "" : " · " + f.inside + " inside")));
      if (f.note) box.append(el("p", "", f.note));
      for (const c of f.best) {
        const key = c.state + c.cell;
        const sign = c.score >= 0 ? "+" : "−";
        box.append(button(c.state + " " + c.cell + " " + sign + Math.abs(c.score).toFixed(3), key,
          f.name + " → " + c.state + " " + c.cell + ": r = " + c.score.toFixed(4)));
      }
      side.append(box);
    }

    textBox.addEventListener("mouseover", (event) => {
      const i = event.target.tgiIndex;
      if (i === undefined) return;
      const lines = [JSON.stringify(chars[i]) + "  #" + i];
      if (data.prob[i] === null) lines.push("first character: nothing predicted it");
      else lines.push("p = " + data.prob[i].toPrecision(4) + "  (" + data.surprise[i].toFixed(3) + " nats)");
      if (data.top[i].length) {
        lines.push("guesses:");
        data.top[i].forEach(([ch, p], k) => lines.push("  " + (k + 1) + ". " + shown(ch).padEnd(2) + " " + p.toFixed(4)));
      }
      if (picked !== null) lines.push(picked[0] + " " + picked.slice(1) + " = " + data.activations[picked][i].toFixed(4));
      tip.textContent = lines.join("\n");
      tip.hidden = false;
      const box = event.target.getBoundingClientRect();
      tip.style.left = Math.min(box.left, window.innerWidth - 220) + "px";
      tip.style.top = (box.bottom + 4) + "px";
    });
    textBox.addEventListener("mouseleave", () => { tip.hidden = true; });

    root.append(textBox, side, tip);
    paint();
  }

  window.textgenInspect = { render };
})();
