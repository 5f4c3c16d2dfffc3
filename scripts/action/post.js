// The GitHub Action's post step, at the end of the job: push what is still queued,
// within the wait-timeout, and print what was pushed (finish.sh).
"use strict";
const { run } = require("./run.js");
run("finish.sh");
