//! `weather`: current conditions for a place.
//!
//! Asks a wttr.in-compatible endpoint (`GET {endpoint}/{place}?format=j1`)
//! configured in the plugin's config; the host only lets the request through
//! to the hosts the manifest grants.

use hearth_sdk::{Call, Plugin, Tool, ToolError, Value, http, json};
use serde::Deserialize;

/// Unit system of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Units {
    /// °C and km/h.
    Metric,
    /// °F and mph.
    Imperial,
}

/// Percent-encodes a place name for a URL path segment.
pub fn encode_place(place: &str) -> String {
    let mut out = String::new();
    for b in place.trim().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The request URL for `place`.
pub fn url(endpoint: &str, place: &str) -> String {
    format!(
        "{}/{}?format=j1",
        endpoint.trim_end_matches('/'),
        encode_place(place)
    )
}

#[derive(Deserialize)]
struct Report {
    current_condition: Vec<Current>,
    #[serde(default)]
    nearest_area: Vec<Area>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Current {
    temp_C: String,
    temp_F: String,
    FeelsLikeC: String,
    FeelsLikeF: String,
    humidity: String,
    windspeedKmph: String,
    windspeedMiles: String,
    weatherDesc: Vec<Text>,
}

#[derive(Deserialize)]
struct Area {
    #[serde(rename = "areaName")]
    area_name: Vec<Text>,
    #[serde(default)]
    country: Vec<Text>,
}

#[derive(Deserialize)]
struct Text {
    value: String,
}

fn number(field: &str, text: &str) -> Result<f64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{field}` is not a number: {text:?}"))
}

/// Turns a wttr.in `format=j1` report into the tool's answer.
pub fn summarize(place: &str, body: &[u8], units: Units) -> Result<Value, String> {
    let report: Report =
        serde_json::from_slice(body).map_err(|e| format!("unexpected weather report: {e}"))?;
    let now = report
        .current_condition
        .first()
        .ok_or("the weather report has no current conditions")?;
    let (temp, feels, wind, t_unit, w_unit) = match units {
        Units::Metric => (
            &now.temp_C,
            &now.FeelsLikeC,
            &now.windspeedKmph,
            "°C",
            "km/h",
        ),
        Units::Imperial => (
            &now.temp_F,
            &now.FeelsLikeF,
            &now.windspeedMiles,
            "°F",
            "mph",
        ),
    };
    let area = report.nearest_area.first();
    let resolved = area
        .and_then(|a| a.area_name.first())
        .map(|t| t.value.clone())
        .unwrap_or_else(|| place.to_string());
    let country = area
        .and_then(|a| a.country.first())
        .map(|t| t.value.clone());
    Ok(json!({
        "location": resolved,
        "country": country,
        "condition": now.weatherDesc.first().map(|t| t.value.trim().to_string()).unwrap_or_default(),
        "temperature": number("temperature", temp)?,
        "feels_like": number("feels_like", feels)?,
        "temperature_unit": t_unit,
        "humidity_percent": number("humidity", &now.humidity)?,
        "wind_speed": number("wind_speed", wind)?,
        "wind_unit": w_unit,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CurrentArgs {
    location: String,
}

struct Weather;

impl Plugin for Weather {
    fn tools() -> Vec<Tool> {
        vec![
            Tool::new(
                "current",
                "Current weather (condition, temperature, humidity, wind) for a city or place",
            )
            .schema(json!({
                "type": "object",
                "properties": {
                    "location": { "type": "string", "minLength": 1, "maxLength": 100, "description": "City or place name, e.g. Berlin" }
                },
                "required": ["location"],
                "additionalProperties": false
            })),
        ]
    }

    fn validate_config(config: &Value) -> Result<(), String> {
        match config.get("endpoint").and_then(Value::as_str) {
            Some(e) if e.starts_with("https://") || e.starts_with("http://") => {}
            Some(e) => return Err(format!("`endpoint` must be an http(s) URL, not {e:?}")),
            None => return Err("`endpoint` is required (a string URL)".into()),
        }
        if let Some(units) = config.get("units") {
            Units::deserialize(units)
                .map_err(|_| format!("`units` must be \"metric\" or \"imperial\", not {units}"))?;
        }
        Ok(())
    }

    fn invoke(call: Call) -> Result<Value, ToolError> {
        match call.tool.as_str() {
            "current" => {
                let args: CurrentArgs = call.args()?;
                if args.location.trim().is_empty() {
                    return Err(ToolError::invalid("`location` is empty"));
                }
                let endpoint: String = hearth_sdk::config::get("endpoint")
                    .map_err(ToolError::failed)?
                    .ok_or_else(|| ToolError::failed("`endpoint` is not configured"))?;
                let units = hearth_sdk::config::get::<Units>("units")
                    .map_err(ToolError::failed)?
                    .unwrap_or(Units::Metric);
                let response = http::get(&url(&endpoint, &args.location)).map_err(|e| match e {
                    http::HttpError::Denied(m) => ToolError::Denied(m),
                    other => ToolError::unavailable(other),
                })?;
                match response.status {
                    200 => {
                        summarize(&args.location, &response.body, units).map_err(ToolError::failed)
                    }
                    404 => Err(ToolError::failed(format!(
                        "unknown location {:?}",
                        args.location
                    ))),
                    status => Err(ToolError::unavailable(format!(
                        "weather service answered HTTP {status}"
                    ))),
                }
            }
            other => Err(ToolError::UnknownTool(other.to_string())),
        }
    }
}

hearth_sdk::register!(Weather);

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
        "current_condition": [{
            "temp_C": "21", "temp_F": "70", "FeelsLikeC": "20", "FeelsLikeF": "68",
            "humidity": "40", "windspeedKmph": "11", "windspeedMiles": "7",
            "weatherDesc": [{"value": "Partly cloudy "}]
        }],
        "nearest_area": [{"areaName": [{"value": "Berlin"}], "country": [{"value": "Germany"}]}]
    }"#;

    #[test]
    fn builds_urls() {
        assert_eq!(
            url("https://wttr.in/", "New York"),
            "https://wttr.in/New+York?format=j1"
        );
        assert_eq!(encode_place("São Paulo"), "S%C3%A3o+Paulo");
        assert_eq!(encode_place("../etc"), "..%2Fetc");
    }

    #[test]
    fn summarizes_reports() {
        let v = summarize("berlin", SAMPLE.as_bytes(), Units::Metric).unwrap();
        assert_eq!(v["location"], "Berlin");
        assert_eq!(v["condition"], "Partly cloudy");
        assert_eq!(v["temperature"], 21.0);
        assert_eq!(v["wind_unit"], "km/h");
        let v = summarize("berlin", SAMPLE.as_bytes(), Units::Imperial).unwrap();
        assert_eq!(v["temperature"], 70.0);
        assert_eq!(v["wind_speed"], 7.0);
    }

    #[test]
    fn rejects_broken_reports() {
        assert!(
            summarize("x", b"<html>", Units::Metric)
                .unwrap_err()
                .contains("unexpected")
        );
        assert!(
            summarize("x", br#"{"current_condition": []}"#, Units::Metric)
                .unwrap_err()
                .contains("no current conditions")
        );
    }

    #[test]
    fn validates_config() {
        assert!(Weather::validate_config(&json!({"endpoint": "https://wttr.in"})).is_ok());
        assert!(Weather::validate_config(&json!({"endpoint": "ftp://x"})).is_err());
        assert!(Weather::validate_config(&json!({})).is_err());
        let e = Weather::validate_config(&json!({"endpoint": "https://a", "units": "kelvin"}))
            .unwrap_err();
        assert!(e.contains("units"), "{e}");
    }
}
