// Package controller is the root of the controller module; its binaries live under cmd/.
package controller
