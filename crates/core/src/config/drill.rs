//! `[drill]`: the defaults of `tern drill start`, the time windows in which
//! a drill may start, and how old the last passed drill may get before
//! `tern status` warns.

use std::time::Duration;

use super::raw::{RawDrill, RawGuardrails, S};
use super::Checker;
use crate::drill::{DrillSettings, DrillWindow, Guardrails, ServiceLimits};

pub(super) fn validate_drill(c: &mut Checker<'_>, raw: Option<&S<RawDrill>>) -> DrillSettings {
    let mut d = DrillSettings::default();
    let Some(raw) = raw else {
        return d;
    };
    let r = raw.get_ref();
    d.max_age = c.duration(&r.max_age, "drill.max_age", d.max_age);
    d.hold = c.duration(&r.hold, "drill.hold", d.hold);
    let shares = |c: &mut Checker<'_>, v: &S<Vec<i64>>, key: &str| -> Option<Vec<u8>> {
        let out: Option<Vec<u8>> = v
            .get_ref()
            .iter()
            .map(|n| u8::try_from(*n).ok().filter(|n| *n <= 100))
            .collect();
        if out.is_none() {
            c.err(v.span(), key, "expected shares in percent, from 0 to 100");
        }
        out
    };
    if let Some(v) = &r.steps {
        if let Some(s) = shares(c, v, "drill.steps") {
            d.steps = s;
        }
    }
    if let Some(v) = &r.return_steps {
        if let Some(s) = shares(c, v, "drill.return_steps") {
            d.return_steps = s;
        }
    }
    if let Some(v) = &r.switchover_at {
        match u8::try_from(*v.get_ref())
            .ok()
            .filter(|n| (1..=100).contains(n))
        {
            Some(n) => d.switchover_at = Some(n),
            None => c.err(
                v.span(),
                "drill.switchover_at",
                "expected a share from 1 to 100",
            ),
        }
    }
    let g = &mut d.guardrails;
    limits(
        c,
        "drill",
        g,
        &r.max_error_rate,
        &r.max_p99,
        &r.min_requests,
    );
    g.window = c.duration(&r.window, "drill.window", g.window);
    if g.window > Duration::from_secs(60) {
        let span = r.window.as_ref().map_or(0..0, |w| w.span());
        c.err(
            span,
            "drill.window",
            "expected a window of at most 60s (the edges keep 64 s)",
        );
    }
    for (i, w) in r.windows.iter().enumerate() {
        match DrillWindow::parse(w.get_ref()) {
            Ok(w) => d.windows.push(w),
            Err(e) => c.err(w.span(), format!("drill.windows[{i}]"), e),
        }
    }
    let spec = crate::drill::DrillSpec {
        service_guardrails: Default::default(),
        region: String::new(),
        steps: d.steps.clone(),
        hold: d.hold,
        return_steps: d.return_steps.clone(),
        switchover_at: d.switchover_at,
        guardrails: d.guardrails,
    };
    if let Err(e) = spec.validate() {
        c.err(raw.span(), "drill", e);
    }
    d
}

/// `[service.NAME.guardrails]` (`key`): the limits the service sets
/// itself; a drill fills in the rest from its own.
pub(super) fn validate_service_guardrails(
    c: &mut Checker<'_>,
    key: &str,
    raw: &S<RawGuardrails>,
) -> ServiceLimits {
    let r = raw.get_ref();
    // Read into a copy of the defaults, keeping only what the table names.
    let mut g = Guardrails::default();
    limits(
        c,
        key,
        &mut g,
        &r.max_error_rate,
        &r.max_p99,
        &r.min_requests,
    );
    ServiceLimits {
        max_error_rate: r.max_error_rate.as_ref().map(|_| g.max_error_rate),
        max_p99: r.max_p99.as_ref().map(|_| g.max_p99),
        min_requests: r.min_requests.as_ref().map(|_| g.min_requests),
    }
}

/// Reads the three limits a guardrail table may set into `g`.
fn limits(
    c: &mut Checker<'_>,
    key: &str,
    g: &mut Guardrails,
    max_error_rate: &Option<S<f64>>,
    max_p99: &Option<S<String>>,
    min_requests: &Option<S<i64>>,
) {
    if let Some(v) = max_error_rate {
        if (0.0..=1.0).contains(v.get_ref()) {
            g.max_error_rate = *v.get_ref();
        } else {
            c.err(
                v.span(),
                format!("{key}.max_error_rate"),
                "expected a share from 0.0 to 1.0 (0.01 is 1%)",
            );
        }
    }
    g.max_p99 = c.duration(max_p99, &format!("{key}.max_p99"), g.max_p99);
    if let Some(v) = min_requests {
        match u64::try_from(*v.get_ref()) {
            Ok(n) => g.min_requests = n,
            Err(_) => c.err(
                v.span(),
                format!("{key}.min_requests"),
                "expected a whole number of requests",
            ),
        }
    }
}
