//! An HTTP/1.1 client by hand, for servers under test: every response is read whole and checked
//! (a body shorter or longer than its Content-Length is an error), on a kept-alive
//! [`Connection`] as Prometheus scrapes, or one request per connection ([`request`], [`get`]).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long a connect, a read or a write may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The server closes the connection after this response.
    pub closed: bool,
    /// When its last byte was read.
    pub done: Instant,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(k, _)| k == name);
        found.map(|(_, v)| v.as_str())
    }
}

/// A client connection, kept alive unless the server says otherwise.
pub struct Connection {
    reader: BufReader<TcpStream>,
    address: SocketAddr,
}

impl Connection {
    pub fn open(address: SocketAddr) -> Result<Connection, String> {
        let stream = TcpStream::connect_timeout(&address, IO_TIMEOUT)
            .map_err(|e| format!("connecting to {address}: {e}"))?;
        let set = |e: std::io::Error| format!("setting up the connection to {address}: {e}");
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(set)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(set)?;
        stream.set_nodelay(true).map_err(set)?;
        Ok(Connection {
            reader: BufReader::with_capacity(1 << 16, stream),
            address,
        })
    }

    /// Sends `request` (whole, as bytes) and reads the response to it.
    pub fn send(&mut self, request: &[u8]) -> Result<Response, String> {
        let address = self.address;
        (self.reader.get_mut())
            .write_all(request)
            .map_err(|e| format!("sending the request to {address}: {e}"))?;
        read_response(&mut self.reader).map_err(|e| format!("the answer of {address}: {e}"))
    }
}

/// `GET path` with `headers` (and `Host`), as bytes to send.
pub fn get_request(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// `GET path` with `headers` on a new connection, closed after the answer.
pub fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    let mut headers = headers.to_vec();
    headers.push(("Connection", "close"));
    request(address, &get_request(address, path, &headers))
}

/// Sends `request` (any bytes, malformed ones too) on a new connection and reads everything
/// until the server closes it: exactly one whole response, nothing after it.
pub fn request(address: SocketAddr, request: &[u8]) -> Result<Response, String> {
    let mut stream = Connection::open(address)?.reader.into_inner();
    stream
        .write_all(request)
        .map_err(|e| format!("sending the request to {address}: {e}"))?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that answers before reading all of a request (a 431) may reset the
        // connection after its answer: what came before counts, if it is whole.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => {}
        Err(e) => return Err(format!("reading the answer of {address}: {e}")),
    }
    let shown = || String::from_utf8_lossy(&raw[..raw.len().min(300)]).into_owned();
    let mut rest = raw.as_slice();
    let response = read_response(&mut rest).map_err(|e| format!("{e}: {:?}", shown()))?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes after the response: {:?}",
            rest.len(),
            shown()
        ));
    }
    Ok(response)
}

/// One response from `reader`, read to its last byte (by Content-Length, chunks, or the end of
/// the connection).
pub fn read_response(reader: &mut impl BufRead) -> Result<Response, String> {
    fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
        move |e| format!("{what}: {e}")
    }
    let mut line = String::new();
    reader.read_line(&mut line).map_err(io("the status line"))?;
    if line.is_empty() {
        return Err("the server closed the connection before answering".into());
    }
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.trim_end().parse().ok())
        .ok_or_else(|| format!("not an HTTP/1 status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io("a header"))? == 0 {
            return Err("the connection closed inside the headers".into());
        }
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("a malformed header: {header:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = header("content-length")
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| format!("content-length {v}"))
        })
        .transpose()?;
    let mut closed = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(io("a chunk's size"))?;
            let size = line.trim_end().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| format!("a chunk size that is not hexadecimal: {line:?}"))?;
            let start = body.len();
            body.resize(start + size, 0);
            (reader.read_exact(&mut body[start..]))
                .map_err(|_| format!("a chunk of {size} bytes cut short"))?;
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf).map_err(io("a chunk's end"))?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(length) = length {
        // Zeroed memory from the allocator: no byte loop (the xtask is built without
        // optimisations, and this is timed).
        body = vec![0; length];
        reader.read_exact(&mut body).map_err(|_| {
            format!("a body that ended before its content-length of {length} bytes")
        })?;
    } else {
        reader.read_to_end(&mut body).map_err(io("the body"))?;
        closed = true;
    }
    let done = Instant::now();
    let body = String::from_utf8(body).map_err(|e| format!("a body that is not UTF-8: {e}"))?;
    Ok(Response {
        status,
        headers,
        body,
        closed,
        done,
    })
}
