// The playground of `imf serve`: a form for one request, the grid it makes, and the same request as a curl line.
"use strict";
const root = document.body.dataset.root;
const $ = (id) => document.getElementById(id);
const form = $("request");
const NUMBERS = ["omega", "t_min", "t_max", "seed", "count", "steps"];

function bound(input, [low, high]) {
  input.min = low;
  if (high !== null) input.max = high;
}

async function describe() {
  const reply = await fetch(root + "/", {headers: {Accept: "application/json"}});
  const info = await reply.json();
  if (!reply.ok) throw new Error(info.error);
  const names = info.class_names || [];
  $("model").textContent = `${info.model_version}: ${info.num_classes} classes, ${info.image_size}px images, ` +
    `at most ${info.max_images} per request.`;
  for (let k = 0; k < info.num_classes; k++) {
    const option = document.createElement("option");
    option.value = names[k] ?? String(k);
    option.label = names[k] === undefined ? "" : `class ${k}`;
    $("class-list").append(option);
  }
  $("class").value = names[0] ?? "0";
  for (const key of ["omega", "t_min", "t_max"]) {
    bound($(key), info.guidance_range[key]);
    $(key).value = info.guidance[key];
  }
  $("steps").value = info.guidance.steps;
  $("count").max = info.max_images;
  $("count").value = Math.min(4, info.max_images);
  form.dataset.state = "ready";
  $("generate").disabled = false;
}

function request() {
  const typed = $("class").value.trim();
  const body = {class: /^\d+$/.test(typed) ? Number(typed) : typed};
  for (const key of NUMBERS) body[key] = Number($(key).value);
  return body;
}

function shellQuoted(text) {
  return "'" + text.replaceAll("'", "'\\''") + "'";
}

function fail(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  form.dataset.state = "error";
}

async function generate(event) {
  event.preventDefault();
  if (!form.reportValidity()) return;
  if (Number($("t_min").value) > Number($("t_max").value)) return fail("t_min must not be above t_max.");
  const body = request();
  form.dataset.state = "busy";
  $("generate").disabled = true;
  $("error").hidden = true;
  try {
    const reply = await fetch(root + "/", {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify(body)});
    if (!reply.ok) return fail((await reply.json()).error);
    const image = await reply.blob();
    $("grid").src = await new Promise((resolve) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.readAsDataURL(image);
    });
    $("made-by").textContent = reply.headers.get("X-IMF-Model-Version");
    $("made-of").textContent = `${reply.headers.get("X-IMF-Images")} image(s) of class ${JSON.stringify(body.class)}, ` +
      `seed ${body.seed}, omega ${body.omega}, interval [${body.t_min}, ${body.t_max}], ${body.steps} step(s)`;
    $("curl").textContent = `curl -s ${location.origin}${root}/ -H 'Content-Type: application/json' ` +
      `-d ${shellQuoted(JSON.stringify(body))} -o images.png`;
    $("result").hidden = $("as-curl").hidden = false;
    form.dataset.state = "done";
  } catch (err) {
    fail(`The server did not answer (${err.message}).`);
  } finally {
    $("generate").disabled = false;
  }
}

async function copy() {
  const text = $("curl").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("curl"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  $("copy").textContent = "Copied";
}

form.addEventListener("submit", generate);
$("copy").addEventListener("click", copy);
describe().catch((err) => fail(`Could not read the model's description (${err.message}).`));
