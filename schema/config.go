package schema

import (
	"errors"
	"fmt"
	"net/url"
	"time"
)

// defaultTimeout bounds one HTTP call to the registry when Config.Timeout is 0.
const defaultTimeout = 10 * time.Second

// Config says how to reach the Schema Registry. Zero values mean defaults.
type Config struct {
	// URL is the registry base URL, http or https (required),
	// e.g. "http://registry:8081".
	URL string `yaml:"url"`
	// Username and Password enable HTTP basic auth; set both or neither.
	// Confluent Cloud takes an API key and secret here.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// PasswordFile holds the basic auth password instead of Password (a
	// Kubernetes Secret mounted as a volume); one trailing line ending is
	// not part of it. NewRegistry reads it, and fails if it is missing or
	// empty; it is read again whenever it changes (another file,
	// modification time or size), so a password rotated in the file is
	// sent from the next request on. Once read, a file gone or emptied
	// keeps the last password in use, with a warning.
	PasswordFile string `yaml:"password_file"`
	// BearerTokenFile is a file holding a token sent as "Authorization:
	// Bearer <token>" with every request, instead of basic auth. The file
	// is read again whenever it changes (modification time or size), so a
	// token rotated in place (a Kubernetes projected volume, a sidecar) is
	// used from the next request on. An empty or unreadable file fails the
	// request; at startup, the start.
	BearerTokenFile string `yaml:"bearer_token_file"`
	// TLS configures the connection to an https URL.
	TLS TLSConfig `yaml:"tls"`
	// Timeout bounds each HTTP call (default 10s), and apart from it the
	// wait for a free request slot when 16 calls are in flight already. A
	// schema with references takes one call per referenced subject version
	// not yet cached.
	Timeout time.Duration `yaml:"timeout"`
}

// Validate returns nil, or one "key: problem" error per bad key joined with
// errors.Join.
func (c Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("url: required"))
	} else if u, err := url.Parse(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("url: %w", err))
	} else {
		switch {
		case u.Scheme != "http" && u.Scheme != "https":
			errs = append(errs, fmt.Errorf("url: scheme must be http or https, got %q", u.Scheme))
		case u.Host == "":
			errs = append(errs, errors.New("url: missing host"))
		case u.RawQuery != "" || u.Fragment != "":
			// srclient appends API paths to the URL verbatim.
			errs = append(errs, errors.New("url: must not have a query or fragment"))
		}
	}
	switch {
	case c.Username != "" && c.Password == "" && c.PasswordFile == "":
		errs = append(errs, errors.New("password: required when username is set (or password_file)"))
	case c.Password != "" && c.PasswordFile != "":
		errs = append(errs, errors.New("password_file: set together with password: set one of them"))
	}
	if c.Password != "" && c.Username == "" {
		errs = append(errs, errors.New("username: required when password is set"))
	}
	if c.PasswordFile != "" && c.Username == "" {
		errs = append(errs, errors.New("username: required when password_file is set"))
	}
	if c.BearerTokenFile != "" {
		if c.Username != "" || c.Password != "" || c.PasswordFile != "" {
			errs = append(errs, errors.New("bearer_token_file: set together with username/password; use one of them"))
		} else if u, err := url.Parse(c.URL); err == nil && u.User != nil {
			errs = append(errs, errors.New("bearer_token_file: set together with user info in url; use one of them"))
		}
	}
	errs = append(errs, validateTLS(c.TLS, c.URL)...)
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout: must not be negative, got %s", c.Timeout))
	}
	return errors.Join(errs...)
}

// WithDefaults returns c with its zero timeout set to the default, as the
// Registry uses it.
func (c Config) WithDefaults() Config {
	c.Timeout = c.timeout()
	return c
}

func (c Config) timeout() time.Duration {
	if c.Timeout == 0 {
		return defaultTimeout
	}
	return c.Timeout
}
