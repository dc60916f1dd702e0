// Drives the official eachlabs SDK (@eachlabs/aiflow), unmodified, against a Daguerre server:
//   node eachlabs_client.js BASE_URL API_KEY MODEL OUT.json
// and writes what each call returned to OUT.json (the SDK logs every request to stdout itself).
const fs = require("fs");
const Each = require("@eachlabs/aiflow");

async function main() {
  const [base, key, model, out] = process.argv.slice(2);
  const each = new Each({ auth: key, apiBaseUrl: `${base}/v1` });
  const input = {
    prompt: "portrait of a woman, soft window light",
    image_size: { width: 192, height: 128 },
    num_inference_steps: 2,
    seed: 11,
  };
  const results = {};
  results.create = await each.prediction.create({ model, version: "0.0.1", input });
  const id = results.create.predictionID;
  let got;
  for (let i = 0; i < 300; i++) {
    got = await each.prediction.get(id);
    if (["success", "error", "cancelled"].includes(got.status)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  results.get = got;
  results.run = await each.prediction.run({ model, version: "0.0.1", input: { ...input, seed: 12 } });
  const slow = await each.prediction.create({
    model, version: "0.0.1", input: { ...input, num_inference_steps: 40, image_size: "square" },
  });
  results.cancel = await each.prediction.cancel(slow.predictionID);
  try {
    await each.prediction.create({ model, version: "0.0.1", input: { ...input, num_images: 9 } });
    results.bad = "no error";
  } catch (e) {
    results.bad = String(e.message);
  }
  fs.writeFileSync(out, JSON.stringify(results));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
