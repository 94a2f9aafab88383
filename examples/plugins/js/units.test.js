// `node --test`: the conversion logic, without hearth or calc.
import { test } from "node:test";
import assert from "node:assert/strict";
import { decimal, dimensionOf, expression } from "./units.js";

test("numbers become plain decimals", () => {
  assert.equal(decimal(1.5), "1.5");
  assert.equal(decimal(-2), "-2");
  assert.equal(decimal(1e21), "1000000000000000000000");
  assert.equal(decimal(1.5e-7), "0.00000015");
  assert.equal(decimal(-1.25e-10), "-0.000000000125");
  assert.throws(() => decimal(Infinity), RangeError);
});

test("linear units scale through the base unit", () => {
  assert.equal(expression(10, "mi", "km"), "(10) * 1609.344 / 1000");
  assert.equal(dimensionOf("oz"), "mass");
});

test("temperatures go through kelvin", () => {
  assert.equal(expression(98.6, "F", "C"), "(((98.6) - 32) * 5 / 9 + 273.15) - 273.15");
  // The same arithmetic in floating point, to check the expression's shape.
  assert.ok(Math.abs(eval(expression(98.6, "F", "C")) - 37) < 1e-9);
});

test("mismatched or unknown units are refused", () => {
  assert.throws(() => expression(1, "km", "kg"), /cannot convert km \(length\) to kg \(mass\)/);
  assert.throws(() => expression(1, "km", "parsec"), /unknown unit `parsec`/);
});
