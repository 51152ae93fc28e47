<?php
// The example policy's routes as a front controller for PHP's built-in server
// (`php -S 127.0.0.1:0 php_router.php`), written the way PHP routers commonly are: the path
// is `REQUEST_URI`'s path, percent-decoded, matched with patterns; the method honours
// Symfony/Laravel's override (`_method` in a POST body or query, or
// `X-HTTP-Method-Override` on a POST).
//
// Like Zend Framework 1 and Symfony before 3.4.14 (CVE-2018-14773), it believes IIS's rewrite
// headers: the routed path comes from `X-Original-URL` or `X-Rewrite-URL` when one is sent.
//
// Identity is read from `$_SERVER`, where PHP folds `-`, `.` and `_` in a header's name into
// `_`: `X.Auth.Role`, `X_Auth_Role` and `X-Auth-Role` all land on `HTTP_X_AUTH_ROLE`.

const IDENTITY = [
    'user_id' => 'HTTP_X_AUTH_USER_ID',
    'email' => 'HTTP_X_AUTH_EMAIL',
    'role' => 'HTTP_X_AUTH_ROLE',
    'session_id' => 'HTTP_X_AUTH_SESSION_ID',
    'forwarded_user' => 'HTTP_X_FORWARDED_USER',
    'remote_user' => 'HTTP_REMOTE_USER',
];

const ROUTES = [
    ['health', '#^/health$#', ['GET', 'HEAD']],
    ['static', '#^/static/(?<rest>.+)$#', ['GET', 'HEAD']],
    ['admin_users', '#^/admin/users$#', ['GET', 'HEAD', 'POST']],
    ['admin_user', '#^/admin/users/(?<id>[^/]+)$#', ['GET', 'HEAD', 'PUT', 'PATCH', 'DELETE']],
    ['project_create', '#^/projects$#', ['POST']],
    ['project', '#^/projects/(?<id>[^/]+)$#', ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE']],
    ['user', '#^/users/(?<id>[^/]+)$#', ['GET', 'HEAD', 'PUT', 'PATCH', 'DELETE']],
    ['user_settings', '#^/users/(?<id>[^/]+)/settings$#', ['GET', 'HEAD', 'PUT']],
    ['report', '#^/reports/(?<year>[^/]+)$#', ['GET', 'HEAD']],
];

function request_method(): string
{
    $method = strtoupper($_SERVER['REQUEST_METHOD']);
    if ($method !== 'POST') {
        return $method;
    }
    $override = $_POST['_method'] ?? $_GET['_method'] ?? $_SERVER['HTTP_X_HTTP_METHOD_OVERRIDE'] ?? null;
    return is_string($override) && $override !== '' ? strtoupper($override) : $method;
}

function answer(?string $handler, int $status, string $method, array $params): void
{
    $identity = null;
    if ($handler !== null) {
        $identity = [];
        foreach (IDENTITY as $key => $name) {
            $identity[$key] = $_SERVER[$name] ?? null;
        }
    }
    $body = json_encode([
        'framework' => 'php',
        'handler' => $handler,
        'method' => $method,
        'params' => (object) $params,
        'identity' => $identity,
    ], JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);
    http_response_code($status);
    header('Content-Type: application/json');
    header('X-Framework-Report: ' . $body);
    echo $body;
}

$method = request_method();
$uri = $_SERVER['HTTP_X_ORIGINAL_URL'] ?? $_SERVER['HTTP_X_REWRITE_URL'] ?? $_SERVER['REQUEST_URI'];
$path = rawurldecode(parse_url($uri, PHP_URL_PATH) ?? '');
foreach (ROUTES as [$handler, $pattern, $methods]) {
    if (preg_match($pattern, $path, $match)) {
        if (!in_array($method, $methods, true)) {
            answer(null, 405, $method, []);
            return;
        }
        $params = array_filter($match, 'is_string', ARRAY_FILTER_USE_KEY);
        answer($handler, 200, $method, $params);
        return;
    }
}
answer(null, 404, $method, []);
