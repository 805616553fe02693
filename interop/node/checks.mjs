// What the interop checkers share: a failed expectation, and the tally of named checks.
// A check prints nothing when it passes (unless verbose) and one FAIL line when it fails.

export class CheckFailed extends Error {}

export function expect(cond, message) {
  if (!cond) throw new CheckFailed(message);
}

export const show = (v) => JSON.stringify(v);

export function expectEqual(actual, want, what) {
  expect(show(actual) === show(want), `${what}: got ${show(actual)}, want ${show(want)}`);
}

// fn must reject with an error of class `errorType`; returns that error.
export async function expectRejected(fn, errorType, what) {
  let result;
  try {
    result = await fn();
  } catch (e) {
    if (e instanceof errorType) return e;
    throw new CheckFailed(`${what}: expected ${errorType.name}, got ${e?.name ?? e}: ${e?.message ?? ''}` +
      (e?.cause ? ` (cause: ${show(e.cause)})` : ''));
  }
  throw new CheckFailed(`${what}: was accepted${result && typeof result === 'object' ? `: {${Object.keys(result)}}` : ''}`);
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
