// The GitHub Action's main step: start pushing what the job builds (start.sh).
// A JavaScript action only so GitHub runs post.js at the end of the job whatever
// happens (`post-if: always()`); composite actions have no post step. No npm
// dependencies: the inputs are handed to the shell script as environment variables.
"use strict";
const { run } = require("./run.js");
run("start.sh");
