// Setup file of stryker.vitest.config.ts: a fresh module registry before every test file, as vitest's
// `isolate` gives, without a new process per file (the config turns `isolate` off for speed). Module
// state — fixture and graph caches, registries — must not outlive a file: under Stryker it would carry
// results computed with one mutant active into the run of the next.
import { vi } from "vitest";

vi.resetModules();
