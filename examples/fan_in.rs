//! Fan-in on one key: several producer threads offer 3× the rate to one key; every 100 ms the
//! accepted rate under absolute and under suppressed is printed side by side, so the cliff of a
//! hard limit and the smooth shedding of the suppressed strategy are visible.
//!
//! `cargo run --release --example fan_in [load-factor] [seconds] [--svg PATH]` (defaults: 3,
//! 4); with `--svg` it also writes the series as an SVG line chart (the README's picture is
//! `cargo run --release --example fan_in -- 3 6 --svg docs/fan_in.svg`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use eyelet::{RateLimit, RateLimiter};

const PRODUCERS: usize = 4;
const RATE: f64 = 1000.0; // per second; W = 1 s, so C = 1000
const TICK: Duration = Duration::from_millis(100);
const BAR_WIDTH: usize = 30;

#[derive(Default)]
struct Counters {
    offered: AtomicU64,
    absolute: AtomicU64,
    suppressed: AtomicU64,
}

fn bar(value: u64, full_scale: u64) -> String {
    let cells = (value as usize * BAR_WIDTH)
        .div_ceil(full_scale.max(1) as usize)
        .min(BAR_WIDTH);
    format!("{:<width$}", "█".repeat(cells), width = BAR_WIDTH)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    let svg = match argv.iter().position(|a| a == "--svg") {
        Some(i) if i + 1 < argv.len() => {
            let path = argv.remove(i + 1);
            argv.remove(i);
            Some(path)
        }
        Some(_) => return Err("--svg needs a path".into()),
        None => None,
    };
    let mut args = argv.into_iter();
    let load: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3.0);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4);
    if !(load.is_finite() && load > 0.0) {
        return Err("load factor must be a positive number".into());
    }

    let rl = RateLimiter::builder()
        .window(Duration::from_secs(1))
        .bucket(Duration::from_millis(10))
        .hard_limit_factor(1.5)
        .seed(7)
        .build()?;
    let rate = RateLimit::try_from(RATE)?;
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Each producer paces itself to load × RATE / PRODUCERS requests per second.
    let interval = Duration::from_secs_f64(PRODUCERS as f64 / (load * RATE));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (rl, counters, stop) = (rl.clone(), counters.clone(), stop.clone());
            thread::spawn(move || {
                let start = Instant::now() + interval.mul_f64(p as f64 / PRODUCERS as f64);
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let due = start + interval * sent;
                    let now = Instant::now();
                    if due > now {
                        thread::sleep(due - now);
                    }
                    sent += 1;
                    counters.offered.fetch_add(1, Ordering::Relaxed);
                    if rl.local().absolute().inc("checkout", &rate, 1).is_allowed() {
                        counters.absolute.fetch_add(1, Ordering::Relaxed);
                    }
                    if rl
                        .local()
                        .suppressed()
                        .inc("checkout", &rate, 1)
                        .is_allowed()
                    {
                        counters.suppressed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let per_tick_target = (RATE * TICK.as_secs_f64()) as u64;
    let full_scale = (per_tick_target as f64 * load).ceil() as u64;
    println!(
        "eyelet fan-in: {PRODUCERS} producers offer {load}× the rate ({} req/s) to one key; \
         limit {RATE} req/s, W = 1 s, G = 10 ms, h = 1.5",
        load * RATE
    );
    println!(
        "accepted per {} ms (target {per_tick_target}); bars scaled to the offered load\n",
        TICK.as_millis()
    );
    println!(
        "{:>6} {:>7}  {:<w$} {:>5}   {:<w$} {:>5}",
        "t(ms)",
        "offered",
        "absolute (hard limit)",
        "",
        "suppressed (shedding)",
        "",
        w = BAR_WIDTH
    );
    let (mut last_o, mut last_a, mut last_s) = (0, 0, 0);
    let (mut sum_a, mut sum_s, mut ticks) = (0u64, 0u64, 0u64);
    let mut series: Vec<[u64; 3]> = Vec::new();
    let begin = Instant::now();
    for tick in 1..=(seconds * 1000 / TICK.as_millis() as u64) {
        let due = begin + TICK * tick as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let (o, a, s) = (
            counters.offered.load(Ordering::Relaxed),
            counters.absolute.load(Ordering::Relaxed),
            counters.suppressed.load(Ordering::Relaxed),
        );
        let (d_o, d_a, d_s) = (o - last_o, a - last_a, s - last_s);
        (last_o, last_a, last_s) = (o, a, s);
        series.push([d_o, d_a, d_s]);
        if tick > 10 {
            sum_a += d_a;
            sum_s += d_s;
            ticks += 1;
        }
        println!(
            "{:>6} {:>7}  {} {:>5}   {} {:>5}",
            tick * TICK.as_millis() as u64,
            d_o,
            bar(d_a, full_scale),
            d_a,
            bar(d_s, full_scale),
            d_s
        );
    }
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        let _ = p.join();
    }
    if ticks > 0 {
        println!(
            "\nafter the first second: mean accepted per tick absolute {:.0}, suppressed {:.0} \
             (target {per_tick_target}); absolute arrives in bursts at each window start, \
             suppressed spreads the same budget evenly",
            sum_a as f64 / ticks as f64,
            sum_s as f64 / ticks as f64
        );
    }
    if let Some(path) = svg {
        std::fs::write(&path, chart(&series, per_tick_target, load))?;
        println!("wrote {path}");
    }
    Ok(())
}

/// A line chart of accepted requests per tick, absolute vs suppressed, with the offered load
/// and the target, as a standalone SVG.
fn chart(series: &[[u64; 3]], target: u64, load: f64) -> String {
    let (w, h) = (920.0, 380.0);
    let (left, right, top, bottom) = (60.0, 20.0, 50.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let y_max = series
        .iter()
        .flat_map(|s| s.iter().copied())
        .max()
        .unwrap_or(1)
        .max(target)
        .div_ceil(50)
        * 50;
    let n = series.len().max(1) as f64;
    let x = |i: f64| left + pw * i / n;
    let y = |v: f64| top + ph * (1.0 - v / y_max as f64);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"15\">eyelet fan-in: one key offered {load}x \
         its rate ({RATE} req/s, W = 1 s, G = 10 ms, h = 1.5): accepted per {} ms</text>\n",
        TICK.as_millis()
    );
    // grid and axes
    for k in 0..=(y_max / 50) {
        let v = (k * 50) as f64;
        svg += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>\n",
            left + pw,
            left - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    let ticks_per_s = (1000 / TICK.as_millis()) as usize;
    for sec in 0..=(series.len() / ticks_per_s) {
        let xs = x((sec * ticks_per_s) as f64);
        svg += &format!(
            "<line x1=\"{xs:.1}\" x2=\"{xs:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{xs:.1}\" y=\"{}\" text-anchor=\"middle\">{sec} s</text>\n",
            top + ph,
            top + ph + 18.0
        );
    }
    svg += &format!(
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{t:.1}\" y2=\"{t:.1}\" stroke=\"#2a9d3a\" \
         stroke-dasharray=\"6 4\"/>\n",
        left + pw,
        t = y(target as f64)
    );
    let line = |idx: usize, color: &str, dash: &str| {
        let pts: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{:.1},{:.1}", x(i as f64 + 1.0), y(s[idx] as f64)))
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" {dash} points=\"{}\"/>\n",
            pts.join(" ")
        )
    };
    svg += &line(0, "#9a9a9a", "stroke-dasharray=\"3 3\"");
    svg += &line(1, "#d1495b", "");
    svg += &line(2, "#2e6fd8", "");
    // legend
    let legend = [
        ("#9a9a9a", "offered"),
        (
            "#d1495b",
            "absolute (hard limit: a burst at each window start)",
        ),
        ("#2e6fd8", "suppressed (sheds a fraction: an even rate)"),
        ("#2a9d3a", "target per tick"),
    ];
    let mut lx = left;
    for (color, label) in legend {
        let ly = h - 14.0;
        svg += &format!(
            "<rect x=\"{lx}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"{ly}\" font-size=\"11\">{label}</text>\n",
            ly - 5.0,
            lx + 18.0
        );
        lx += 28.0 + 5.9 * label.len() as f64;
    }
    svg += "</svg>\n";
    svg
}
