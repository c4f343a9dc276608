//! An actix-web server limited per client address, to try with curl.
//!
//! ```text
//! cargo run --release --features actix-web --example actix_web -- --port 8080 --rate 5
//! curl -i http://127.0.0.1:8080/        # 200, RateLimit: "per-client";r=4;t=1
//! for i in $(seq 8); do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8080/; done
//! ```
//!
//! Serves `GET /` on 127.0.0.1:PORT, at most RATE requests per second per client address
//! (W = 1 s, absolute strategy): the rest get `429 Too Many Requests` with `Retry-After` and
//! the `RateLimit-Policy` / `RateLimit` fields. Prints one line when it is listening.
//! `--exit-after SECONDS` stops it after that long (for scripts and CI).

use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use eyelet::actix_web::RateLimiting;
use eyelet::http::HttpLimit;
use eyelet::{RateLimit, RateLimiter};

struct Args {
    port: u16,
    rate: f64,
    exit_after: Option<u64>,
}

fn usage() -> String {
    "usage: actix_web --port P --rate R [--exit-after SECONDS]".to_owned()
}

fn parse_args() -> Result<Args, String> {
    let mut port = None;
    let mut rate = None;
    let mut exit_after = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let bad = |what: &str| format!("{flag} {value}: not {what}\n{}", usage());
        match flag.as_str() {
            "--port" => port = Some(value.parse::<u16>().map_err(|_| bad("a port"))?),
            "--rate" => rate = Some(value.parse::<f64>().map_err(|_| bad("a number"))?),
            "--exit-after" => {
                exit_after = Some(value.parse::<u64>().map_err(|_| bad("whole seconds"))?)
            }
            _ => return Err(format!("unknown flag {flag}\n{}", usage())),
        }
    }
    Ok(Args {
        port: port.ok_or_else(usage)?,
        rate: rate.ok_or_else(usage)?,
        exit_after,
    })
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rate = RateLimit::try_from(args.rate).map_err(|e| format!("--rate {}: {e}", args.rate))?;
    let limiter = RateLimiter::builder()
        .window(Duration::from_secs(1))
        .build()?;
    let limit = HttpLimit::new(limiter, rate).name("per-client");
    let server = HttpServer::new(move || {
        App::new().wrap(RateLimiting::new(limit.clone())).route(
            "/",
            web::get().to(|| async { HttpResponse::Ok().body("hello\n") }),
        )
    })
    .workers(2)
    .bind(("127.0.0.1", args.port))?;
    let addr = server.addrs()[0];
    let server = server.run();
    println!(
        "listening on http://{addr}/ ({} requests per second per client address)",
        args.rate
    );
    if let Some(secs) = args.exit_after {
        let handle = server.handle();
        actix_web::rt::spawn(async move {
            actix_web::rt::time::sleep(Duration::from_secs(secs)).await;
            handle.stop(true).await;
        });
    }
    server.await?;
    Ok(())
}
