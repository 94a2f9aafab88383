// The units `units.convert` knows and the calc expression for a conversion.
// This module imports nothing from hearth, so Node runs its tests
// (`node --test`) as well as the plugin bundles it.

// Each unit's size in its dimension's base unit, as exact decimal text:
// calc computes with rationals, so 0.3048 is exactly 3048/10000.
const LINEAR = {
  length: { m: "1", km: "1000", cm: "0.01", mm: "0.001", mi: "1609.344", yd: "0.9144", ft: "0.3048", in: "0.0254", nmi: "1852" },
  mass: { kg: "1", g: "0.001", mg: "0.000001", t: "1000", lb: "0.45359237", oz: "0.028349523125" },
  time: { s: "1", ms: "0.001", min: "60", h: "3600", d: "86400", wk: "604800" },
  volume: { l: "1", ml: "0.001", m3: "1000", gal: "3.785411784", qt: "0.946352946", floz: "0.0295735295625" },
};

// Temperatures are affine, not proportional: each goes to kelvin and back.
const TO_KELVIN = { K: (x) => x, C: (x) => `${x} + 273.15`, F: (x) => `(${x} - 32) * 5 / 9 + 273.15` };
const FROM_KELVIN = { K: (k) => k, C: (k) => `${k} - 273.15`, F: (k) => `(${k} - 273.15) * 9 / 5 + 32` };

/** Every unit by dimension: `{ length: ["m", "km", …], …, temperature: ["K", "C", "F"] }`. */
export const UNITS = Object.fromEntries([
  ...Object.entries(LINEAR).map(([dimension, units]) => [dimension, Object.keys(units)]),
  ["temperature", Object.keys(TO_KELVIN)],
]);

/** The dimension of `unit`, or undefined for a unit nobody knows. */
export function dimensionOf(unit) {
  return Object.keys(UNITS).find((d) => UNITS[d].includes(unit));
}

/**
 * A JavaScript number as plain decimal text (calc reads no exponents):
 * 1e21 is "1000000000000000000000", 1.5e-7 is "0.00000015".
 */
export function decimal(n) {
  if (!Number.isFinite(n)) throw new RangeError(`${n} is not a finite number`);
  const text = String(n);
  const e = text.search(/e/i);
  if (e < 0) return text;
  const sign = text.startsWith("-") ? "-" : "";
  const [whole, fraction = ""] = text.slice(sign.length, e).split(".");
  const digits = whole + fraction;
  const point = whole.length + Number(text.slice(e + 1));
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return sign + digits + "0".repeat(point - digits.length);
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/**
 * The calc expression that converts `value` from `from` to `to`, or throws
 * a TypeError naming the problem when the units do not convert.
 */
export function expression(value, from, to) {
  const dimension = dimensionOf(from);
  const target = dimensionOf(to);
  if (!dimension || !target) {
    throw new TypeError(`unknown unit \`${dimension ? to : from}\``);
  }
  if (dimension !== target) {
    throw new TypeError(`cannot convert ${from} (${dimension}) to ${to} (${target})`);
  }
  const x = `(${decimal(value)})`;
  if (dimension === "temperature") {
    return FROM_KELVIN[to](`(${TO_KELVIN[from](x)})`);
  }
  const units = LINEAR[dimension];
  return `${x} * ${units[from]} / ${units[to]}`;
}
