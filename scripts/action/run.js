// Runs one of this directory's shell scripts with the action's inputs as plain
// environment variables. GitHub passes input `foo-bar` as INPUT_FOO-BAR, a name a
// shell cannot read; secrets go through the environment, never arguments.
"use strict";
const { spawnSync } = require("child_process");
const path = require("path");

const INPUTS = ["cache-url", "token", "signing-key", "mode", "wait-timeout", "upstream"];

function input(name) {
  return (process.env[`INPUT_${name.replace(/ /g, "_").toUpperCase()}`] || "").trim();
}

exports.run = function run(script) {
  // The raw INPUT_* variables (the token and the signing key among them) are not
  // passed on: the script hands secrets only to the commands that need them.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("INPUT_")));
  env.NIXFLARE_ACTION_ROOT = path.resolve(__dirname, "..", "..");
  for (const name of INPUTS) {
    env[`NIXFLARE_INPUT_${name.replace(/-/g, "_").toUpperCase()}`] = input(name);
  }
  const result = spawnSync("bash", [path.join(__dirname, script)], { stdio: "inherit", env });
  if (result.error) {
    console.log(`::error::nixflare: ${result.error.message}`);
    process.exit(1);
  }
  process.exit(result.status === null ? 1 : result.status);
};
