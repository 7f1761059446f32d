// sio_server.js - the Socket.IO 4.8 peer of bench/peers/run: the same chat job as Parley, in memory.
//   node sio_server.js PORT
// 1:1: every socket joins the room "u:<user>" (user from the handshake query); an event
// "send" {to, content, id} is emitted as "msg" to the room "u:<to>" and acked to the sender.
// Broadcast rooms: "join" ROOM, then "room" {room, content} goes to every member of "r:<room>".
// GET /inbox answers an empty inbox at once (the short-poll peer: Node's own HTTP server).
// Nothing is stored: a message to a user with no socket is acked and dropped.
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 3000);
const empty = '{"events":[],"next":0}';
const srv = http.createServer((req, res) => {
	if (req.url.startsWith("/inbox")) {
		res.writeHead(200, { "Content-Type": "application/json", "Content-Length": empty.length });
		res.end(empty);
	}
});
const io = new Server(srv, {
	transports: ["polling", "websocket"],
	serveClient: false,
	perMessageDeflate: false,
	httpCompression: false,
	cors: { origin: "*" },
});
io.on("connection", (s) => {
	const user = String(s.handshake.query.user || "anon");
	s.join("u:" + user);
	s.on("send", (m, ack) => {
		io.to("u:" + m.to).emit("msg", m);
		if (typeof ack === "function")
			ack({ status: "success" });
	});
	s.on("join", (room, ack) => {
		s.join("r:" + room);
		if (typeof ack === "function")
			ack({ status: "success" });
	});
	s.on("room", (m) => io.to("r:" + m.room).emit("room", m));
});
srv.listen(port, "127.0.0.1", () => console.log("listening " + port));
process.on("SIGTERM", () => process.exit(0));
