// What the interop checkers share: a failed expectation, and the tally of named checks.
// A check prints nothing when it passes (unless verbose) and one FAIL line when it fails.

export class CheckFailed extends Error {}

export function expect(cond, message) {
  if (!cond) throw new CheckFailed(message);
}

// Runs named checks and counts them: `passed`, `failed`.
export class Checks {
  constructor(verbose) {
    this.verbose = verbose;
    this.passed = 0;
    this.failed = 0;
  }

  async check(name, fn) {
    try {
      await fn();
      this.passed += 1;
      if (this.verbose) console.log(`  ok   ${name}`);
    } catch (e) {
      this.failed += 1;
      const why = e instanceof CheckFailed ? e.message : `${e?.name ?? 'Error'}: ${e?.message ?? e}`;
      console.log(`  FAIL ${name}: ${why}`);
      if (this.verbose && !(e instanceof CheckFailed)) console.log(e);
    }
  }
}
