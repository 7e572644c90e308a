#!/usr/bin/env node
// Runs src/cli/serve.ts through tsx, so model files written in TypeScript load at run time too.
import { register } from "tsx/esm/api";

register();
await import("../src/cli/serve.ts");
