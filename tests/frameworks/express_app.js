// The example policy's routes as an Express 4 app with Express's defaults (case-insensitive,
// non-strict routing) and the `method-override` middleware's default behaviour
// (`X-HTTP-Method-Override` on POST), which many Express apps install.
//
// Identity is read with `req.get()`. Run with NODE_PATH=/usr/share/nodejs (Debian's
// node-express).
"use strict";

const express = require("express");

const IDENTITY = {
  user_id: "X-Auth-User-Id",
  email: "X-Auth-Email",
  role: "X-Auth-Role",
  session_id: "X-Auth-Session-Id",
  forwarded_user: "X-Forwarded-User",
  remote_user: "Remote-User",
};
const OVERRIDABLE = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

const app = express();

// What `methodOverride("X-HTTP-Method-Override")` does: only a POST may be overridden.
app.use((req, _res, next) => {
  const wanted = req.get("X-HTTP-Method-Override");
  if (req.method === "POST" && wanted && OVERRIDABLE.includes(wanted.toUpperCase())) {
    req.originalMethod = req.method;
    req.method = wanted.toUpperCase();
  }
  next();
});

function answer(req, res, handler, status, params) {
  let identity = null;
  if (handler !== null) {
    identity = {};
    for (const [key, name] of Object.entries(IDENTITY)) {
      const value = req.get(name);
      identity[key] = value === undefined ? null : value;
    }
  }
  const body = JSON.stringify({
    framework: "express",
    handler,
    method: req.method,
    params: params || {},
    identity,
  }).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  res.status(status).set("X-Framework-Report", body).type("application/json").send(body);
}

function handle(name) {
  return (req, res) => answer(req, res, name, 200, req.params);
}

app.get("/health", handle("health"));
app.get("/static/:rest(.*)", handle("static"));
app.route("/admin/users").get(handle("admin_users")).post(handle("admin_users"));
app
  .route("/admin/users/:id")
  .get(handle("admin_user"))
  .put(handle("admin_user"))
  .patch(handle("admin_user"))
  .delete(handle("admin_user"));
app.post("/projects", handle("project_create"));
app
  .route("/projects/:id")
  .get(handle("project"))
  .post(handle("project"))
  .put(handle("project"))
  .patch(handle("project"))
  .delete(handle("project"));
app
  .route("/users/:id")
  .get(handle("user"))
  .put(handle("user"))
  .patch(handle("user"))
  .delete(handle("user"));
app.route("/users/:id/settings").get(handle("user_settings")).put(handle("user_settings"));
app.get("/reports/:year", handle("report"));
app.use((req, res) => answer(req, res, null, 404, {}));

const server = app.listen(0, "127.0.0.1", () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
